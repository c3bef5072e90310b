"""``flax_lenet.no_dynamo``: torch.optim without importing torch._dynamo, bit for bit torch's path.

Each check runs in a fresh interpreter: once ``torch._dynamo`` is imported (by any test in this
process) ``no_dynamo`` is torch's own path, and there would be nothing left to compare.
"""

import subprocess
import sys
import textwrap

import pytest

SAME_BITS = textwrap.dedent("""
    import sys
    import torch
    from flax_lenet import no_dynamo

    def run(cls, kwargs, eager):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        x, y = torch.randn(4, 7), torch.randn(4, 3)
        if eager:
            with no_dynamo.eager_optim():
                opt = cls(net.parameters(), **kwargs)
                for _ in range(4):
                    opt.zero_grad()
                    torch.nn.functional.mse_loss(net(x), y).backward()
                    no_dynamo.step(opt)
        else:
            opt = cls(net.parameters(), **kwargs)
            for _ in range(4):
                opt.zero_grad()
                torch.nn.functional.mse_loss(net(x), y).backward()
                opt.step()
        return [p.detach().clone() for p in net.parameters()]

    cases = [(torch.optim.SGD, dict(lr=0.1)),
             (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
             (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5)),
             (torch.optim.Adam, dict(lr=0.01)),
             (torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
             (torch.optim.AdamW, dict(lr=0.01))]
    eager = [run(c, k, True) for c, k in cases]
    assert "torch._dynamo" not in sys.modules, "no_dynamo imported torch._dynamo"
    marks = [f for f in no_dynamo._wrapped_methods(torch.optim.Optimizer) if hasattr(f, "__dynamo_disable")]
    assert not marks, f"eager_optim left its marks on {marks}"
    torch_path = [run(c, k, False) for c, k in cases]
    assert "torch._dynamo" in sys.modules, "torch's own path no longer imports torch._dynamo"
    for (c, k), a, b in zip(cases, eager, torch_path):
        for pa, pb in zip(a, b):
            assert torch.equal(pa, pb), f"{c.__name__}({k}): no_dynamo differs from torch's step"
    print("ok", len(cases))
""")

COMMANDS = textwrap.dedent("""
    import sys
    from flax_lenet.app import cli
    for argv in (["compare"], ["compare", "--steps", "2", "--optimizer", "adam"]):
        try:
            cli.main(argv)
        except SystemExit as e:
            assert not e.code, (argv, e.code)
        assert "torch._dynamo" not in sys.modules, f"flax-lenet {' '.join(argv)} imported torch._dynamo"
    print("ok")
""")


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_optimizers_through_no_dynamo_match_torchs_own_step_bit_for_bit():
    assert _python(SAME_BITS).split()[-2:] == ["ok", "6"]


@pytest.mark.slow
def test_compare_and_trajectory_never_import_torch_dynamo():
    assert _python(COMMANDS).strip().endswith("ok")


def test_a_step_hook_still_runs():
    """With a step hook registered, ``step`` is torch's path, which calls the hook."""
    import torch

    from flax_lenet import no_dynamo
    p = torch.nn.Parameter(torch.ones(3))
    seen = []
    with no_dynamo.eager_optim():
        opt = torch.optim.SGD([p], lr=0.5)
        opt.register_step_post_hook(lambda o, a, k: seen.append(1))
        p.sum().backward()
        no_dynamo.step(opt)
    assert seen == [1] and torch.equal(p.detach(), torch.full((3,), 0.5))
