"""The porting harness: convert a torch model's weights to its Flax port and prove the two agree.

  port         weight conversion for any torch model, by module path and layer type
  parity       ``check(torch_model, flax_model, inputs)``: outputs, loss, every gradient, N steps
  trajectory   N training steps of the tutorial's Net in both frameworks, compared after each
  tolerances   every tolerance tier, each with its reason
  pitfalls     the porting pitfalls, each with the test that shows it
  hooks, graph torch hooks <-> Flax interception; autograd's grad_fn chain <-> the jaxpr
"""
