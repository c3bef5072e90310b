"""Claims no parity comparison can check, because both frameworks would agree on the mistake.

- checkpoints: ``.pt`` files are read with ``torch.load(weights_only=True)``, asked for explicitly,
  and the torch floor in ``pyproject.toml`` is the version the project is tested on;
- the learning-rate schedule drops at the step its definition says, in optax and in torch;
- conversion hands back arrays that share no memory with what it was given.
"""

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from flax_lenet import convert
from flax_lenet.app import checkpoint, training
from flax_lenet.errors import BadWeights
from helpers import state_numpy, torch_net

ROOT = Path(__file__).resolve().parent.parent


# --- torch.load(weights_only=True), and a torch floor where that is also the default --------------

def test_torch_checkpoints_are_loaded_with_weights_only_true(tmp_path, monkeypatch):
    path = tmp_path / "net.pt"
    checkpoint.save(path, state_numpy(torch_net(3, "float32")))
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    state = checkpoint.load_state(path)
    assert sorted(state) == sorted(convert.torch_shapes(3))
    assert len(calls) == 1 and calls[0].get("weights_only") is True, calls


@pytest.mark.parametrize("content,found", [
    (lambda sd: list(sd.values()), "found list"),
    (lambda sd: {**sd, "conv1.bias": 1.5}, "found a dict with non-tensor values"),
])
def test_a_pt_file_of_something_else_than_a_state_dict_is_bad_weights(tmp_path, content, found):
    path = tmp_path / "other.pt"
    torch.save(content(dict(torch_net(3, "float32").state_dict())), path)
    with pytest.raises(BadWeights, match=f"expected a state_dict {{name: tensor}}, {found}$"):
        checkpoint.load_state(path)


def _version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def test_torch_floor_is_the_tested_version():
    # torch.load's weights_only defaults to True from torch 2.6 on, False before; the project
    # passes it explicitly, and its floor is the version CI pins (.ci/constraints-cpu.txt)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.fullmatch(r"torch>=([\d.]+)", d.replace(" ", "")).group(1) for d in deps if d.startswith("torch"))
    pinned = re.search(r"^torch==([\d.]+)", (ROOT / ".ci/constraints-cpu.txt").read_text(), re.M).group(1)
    assert _version(floor) == _version(pinned), f"pyproject torch>={floor}, CI pins torch=={pinned}"
    assert _version(floor) >= (2, 6)
    assert _version(torch.__version__) >= _version(floor)


# --- the learning-rate schedule against its definition ---------------------------------------

def _lr_per_step(cfg, steps_per_epoch, total):
    """The learning rate each framework uses at steps 0..total-1, read off the optimizers."""
    import jax.numpy as jnp
    param = torch.zeros(1, requires_grad=True)
    tx, t_opt, t_sched = training.build_optimizers(cfg, [param], steps_per_epoch)
    state = tx.init(jnp.zeros(()))
    optax_lr, torch_lr = [], []
    for _ in range(total):
        updates, state = tx.update(jnp.ones(()), state)   # plain SGD: the update is -lr * 1
        optax_lr.append(-float(updates))
        torch_lr.append(t_opt.param_groups[0]["lr"])
        t_opt.step()
        t_sched.step()                                     # once per batch, as training.train does
    return np.array(optax_lr), np.array(torch_lr)


@pytest.mark.x64
def test_learning_rate_drops_at_the_stated_step_in_both_frameworks():
    # 100 examples, batches of 32, last partial batch dropped: 3 steps per epoch; 10 epochs with
    # the drop at 0.7 of them: epoch 7 starts at step 7 * 3 = 21 (0-based), lr 0.02 -> 0.002
    cfg = training.TrainConfig(epochs=10, batch_size=32, lr=0.02, momentum=0.0, lr_decay_at=0.7)
    steps_per_epoch = training.batch_order(100, cfg).shape[1]
    assert steps_per_epoch == 3
    assert training.decay_step(cfg, steps_per_epoch) == 21
    expected = np.where(np.arange(30) < 21, 0.02, 0.02 * 0.1)
    optax_lr, torch_lr = _lr_per_step(cfg, steps_per_epoch, 30)
    np.testing.assert_array_equal(optax_lr, expected)
    np.testing.assert_array_equal(torch_lr, expected)


@pytest.mark.x64
def test_momentum_reaches_both_optimizers():
    # constant gradient 1 from w = 0: torch's buffer b_t = 0.9 * b_{t-1} + 1, w_t = w_{t-1} - lr * b_t
    cfg = training.TrainConfig(lr=0.02, momentum=0.9, lr_decay_at=1.0, epochs=1)
    import jax.numpy as jnp
    import optax
    param = torch.zeros((), dtype=torch.float64, requires_grad=True)
    tx, t_opt, _ = training.build_optimizers(cfg, [param], 10)
    w = jnp.zeros((), jnp.float64)
    state = tx.init(w)
    flax_w, torch_w = [], []
    for _ in range(3):
        updates, state = tx.update(jnp.ones((), jnp.float64), state)
        w = optax.apply_updates(w, updates)
        param.grad = torch.ones((), dtype=torch.float64)
        t_opt.step()
        flax_w.append(float(w))
        torch_w.append(float(param.detach()))
    assert flax_w == torch_w
    assert torch_w[0] == -0.02
    assert torch_w[1] - torch_w[0] < torch_w[0] < 0            # the second step is longer: 1.9 lr, not lr


@pytest.mark.parametrize("epochs,at,steps,first", [(20, 0.7, 44, 14 * 44), (3, 0.5, 5, 2 * 5),
                                                   (4, 1.0, 7, 28), (4, 0.0, 7, 0)])
def test_decay_step_is_counted_in_steps(epochs, at, steps, first):
    # round(at * epochs) epochs of `steps` batches each; 1.0 means after the last step (never)
    cfg = training.TrainConfig(epochs=epochs, lr_decay_at=at)
    assert training.decay_step(cfg, steps) == first


# --- conversion returns fresh arrays ---------------------------------------------------------

def _shared(out: dict, given: list) -> list:
    return [k for k, a in out.items() if any(np.shares_memory(a, g) for g in given)]


@pytest.mark.parametrize("source", ["numpy", "fortran", "torch"])
def test_torch_to_flax_copies(source):
    # "fortran": weights in column-major order, whose transpose is already C-ordered, so a
    # layout change that only copies non-contiguous results would hand back a view of them
    net = torch_net(3, "float32")
    state = dict(net.state_dict()) if source == "torch" else state_numpy(net)
    if source == "fortran":
        state = {k: np.asfortranarray(v) for k, v in state.items()}
    given = [t.numpy() for t in state.values()] if source == "torch" else list(state.values())
    params = convert.torch_to_flax(state)
    flat = {f"{layer}/{k}": a for layer, leaves in params.items() for k, a in leaves.items()}
    assert _shared(flat, given) == []
    before = {k: np.array(g) for k, g in zip(state, given)}
    for a in flat.values():
        a += 1.0                                           # writing to the result ...
    assert all(np.array_equal(g, before[k]) for k, g in zip(state, given))   # ... leaves the input


@pytest.mark.parametrize("order", ["C", "F"])
def test_flax_to_torch_copies(order):
    params = convert.torch_to_flax(state_numpy(torch_net(3, "float32")))
    params = {layer: {k: np.array(a, order=order) for k, a in leaves.items()} for layer, leaves in params.items()}
    given = [a for leaves in params.values() for a in leaves.values()]
    assert _shared(convert.flax_to_torch(params), given) == []


def test_state_to_numpy_copies():
    net = torch_net(3, "float32")
    numpy_state = state_numpy(net)
    assert _shared(convert.state_to_numpy(numpy_state), list(numpy_state.values())) == []
    tensors = dict(net.state_dict())
    assert _shared(convert.state_to_numpy(tensors), [t.numpy() for t in tensors.values()]) == []


# --- image layouts: NCHW <-> NHWC ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5), (2, 2, 1, 4, 5)])
def test_image_layouts_move_the_channel_axis_only(shape):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)       # (..., C, H, W), all distinct
    nhwc = convert.nchw_to_nhwc(x)
    lead, (c, h, w) = shape[:-3], shape[-3:]
    assert nhwc.shape == (*lead, h, w, c) and nhwc.flags["C_CONTIGUOUS"]
    for index in np.ndindex(*lead, c, h, w):                             # out[..., h, w, c] = x[..., c, h, w]
        *pre, ci, hi, wi = index
        assert nhwc[(*pre, hi, wi, ci)] == x[index]
    back = convert.nhwc_to_nchw(nhwc)
    np.testing.assert_array_equal(back, x)
    assert not np.shares_memory(back, nhwc)


def test_nhwc_to_nchw_gives_fresh_c_strides_for_one_channel():
    # numpy calls a moved single-channel array contiguous and keeps its strides; torch's
    # x.view(-1, ...) in the tutorial's forward refuses them, so the strides must be fresh ones
    out = convert.nhwc_to_nchw(np.zeros((2, 4, 4, 1), np.float32))
    assert out.shape == (2, 1, 4, 4) and out.strides == np.zeros((2, 1, 4, 4), np.float32).strides
