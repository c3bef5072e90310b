"""The porting harness: convert a torch model's weights to its Flax port and prove the two agree.

  port         weight conversion for any torch model, by module path and layer type
  parity       ``check(torch_model, flax_model, inputs)``: outputs, loss, every gradient, N steps
  localise     ``first_divergence``: the first module where a port departs, forward and backward
  attention, recurrent, simple_rules
               conversion rules for MultiheadAttention, LSTM/GRU, PReLU and kin
  modules      torch-compatible NNX modules where Flax's own compute something else
  dropout      Dropout rates that differ (the comparison runs with dropout off)
  trajectory   N training steps of the tutorial's Net in both frameworks, compared after each
  tolerances   every tolerance tier, each with its reason
  pitfalls     the porting pitfalls, each with the test that shows it
  hooks, graph torch hooks <-> Flax interception; autograd's grad_fn chain <-> the jaxpr
"""
