"""Run the tutorial once in torch and once in a Flax flavour from the same weights, and diff.

The quantities are the tutorial's steps: the converted parameters, the logits, the MSE loss,
the gradient of every parameter (compared in torch layout), the parameters after one manual
update ``w - lr * g`` and after one ``optim.SGD`` / ``optax.sgd`` step. Weights and data
travel through numpy; no RNG stream is shared between the frameworks.
"""

import contextlib
import functools
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from flax_lenet import convert, functional, linen, no_dynamo, train
from flax_lenet.checks import check_images
from flax_lenet.errors import BadConfig
from flax_lenet.tolerances import EXACT, Tolerance, tolerance

FLAVOURS = ("nnx", "linen", "functional")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Row:
    quantity: str
    flavour: str
    max_abs: float
    max_rel: float
    rtol: float
    note: str = ""       # which tensor held NaN or Inf, when one did ("" otherwise)

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.rtol       # False for inf and NaN

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def diff(actual, expected) -> tuple[float, float]:
    """``(max|a - e|, max|a - e| / max|e|)`` over a whole array; shapes must match.

    ``actual`` is the Flax side, ``expected`` the torch reference, whose largest magnitude is the
    scale (an all-zero reference: the absolute difference). A NaN or Inf on either side gives
    ``(inf, inf)``, which no tolerance accepts; ``nonfinite`` says where it was.
    """
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shape mismatch: flax {a.shape} vs torch {e.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(e))):
        return float("inf"), float("inf")
    max_abs = float(np.max(np.abs(a - e))) if a.size else 0.0
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def _count(a: np.ndarray) -> str:
    parts = [f"{n} {what}" for n, what in ((int(np.sum(np.isnan(a))), "NaN"), (int(np.sum(np.isinf(a))), "Inf")) if n]
    return " and ".join(parts)


def nonfinite(actual, expected, name: str) -> str:
    """``''`` when both arrays are finite, else e.g. ``'flax grad fc1.bias holds 1 NaN'``."""
    found = [f"{side} {name} holds {_count(np.asarray(a, np.float64))}"
             for side, a in (("flax", actual), ("torch", expected)) if not np.all(np.isfinite(a))]
    return "; ".join(found)


def row(quantity: str, flavour: str, pairs: dict, rtol: float) -> Row:
    """One ``Row`` for ``{tensor name: (flax, torch)}``: the tensor with the largest relative
    difference, and a note naming every tensor that held NaN or Inf."""
    diffs = {name: diff(a, e) for name, (a, e) in pairs.items()}
    worst = max(diffs.values(), key=lambda d: d[1])
    note = "; ".join(filter(None, (nonfinite(a, e, name) for name, (a, e) in pairs.items())))
    return Row(quantity, flavour, *worst, rtol, note)


def tutorial_data(batch: int, seed: int, dtype: str, steps: int | None = None):
    """The tutorial's ``input = randn(N, 1, 32, 32)`` (NCHW) and ``target = randn(N, 10)``, via numpy.

    With ``steps``, that many batches: ``(steps, N, 1, 32, 32)`` and ``(steps, N, 10)``.
    """
    rng = np.random.default_rng(seed)
    lead = (batch,) if steps is None else (steps, batch)
    x = rng.standard_normal((*lead, 1, 32, 32)).astype(dtype)
    target = rng.standard_normal((*lead, 10)).astype(dtype)
    return x, target


# --- torch side ------------------------------------------------------------------------------

def torch_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def torch_tf32(enabled: bool | None):
    """TF32 in torch's cuDNN convolutions (on by default) and CUDA matmuls (off by default).

    ``True`` or ``False`` sets both for the block; ``None`` leaves torch's defaults. The flags
    are restored on exit.
    """
    import torch
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def torch_run(net, x_nchw: np.ndarray, target: np.ndarray, lr: float) -> dict:
    """The tutorial in torch on ``net`` (left unchanged): logits, loss, grads, both updates."""
    import copy

    import torch
    dev = next(net.parameters()).device
    x = torch.from_numpy(x_nchw).to(dev)
    y = torch.from_numpy(target).to(dev)
    criterion = torch.nn.MSELoss()

    work = copy.deepcopy(net)
    work.zero_grad()
    out = work(x)
    loss = criterion(out, y)
    loss.backward()
    grads = convert.state_to_numpy({k: p.grad for k, p in work.named_parameters()})
    with torch.no_grad():          # the tutorial's f.data.sub_(f.grad.data * learning_rate)
        for f in work.parameters():
            f.data.sub_(f.grad.data * lr)
    manual = convert.state_to_numpy(work.state_dict())

    work = copy.deepcopy(net)
    with no_dynamo.eager_optim():      # torch.optim, without importing torch._dynamo (~1 s)
        optimizer = torch.optim.SGD(work.parameters(), lr=lr)
        optimizer.zero_grad()
        criterion(work(x), y).backward()
        no_dynamo.step(optimizer)      # optimizer.step()
    return {"logits": out.detach().cpu().numpy(), "loss": loss.detach().cpu().numpy(),
            "grads": grads, "manual": manual, "sgd": convert.state_to_numpy(work.state_dict())}


# --- flax side -------------------------------------------------------------------------------

def _jnp_tree(params, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


@nnx.jit
def _nnx_forward_and_grads(model, x, y):
    """``model(x)``, the loss and its gradient, compiled as a user would run them."""
    loss, grads = nnx.value_and_grad(train.loss_fn)(model, x, y)
    return model(x), loss, grads


@functools.lru_cache(maxsize=None)
def _linen_apply(kernel_size: int, dtype):
    net = linen.Net(kernel_size, param_dtype=dtype)
    return lambda q, xb: net.apply({"params": q}, xb)


@functools.partial(jax.jit, static_argnums=0)
def _pure_run(apply, p, x, y, lr):
    """Logits, loss, gradients and both updates for a flavour given as ``apply(params, x)``."""
    logits = apply(p, x)
    loss, grads = jax.value_and_grad(lambda q: functional.mse_loss(apply(q, x), y))(p)
    tx = optax.sgd(lr)
    updates, _ = tx.update(grads, tx.init(p), p)
    return logits, loss, grads, train.sgd_update(p, grads, lr), optax.apply_updates(p, updates)


def flax_run(flavour: str, params: dict, x_nhwc: np.ndarray, target: np.ndarray, lr: float) -> dict:
    """The tutorial in one Flax flavour from the converted ``params``; results in torch layout."""
    check_images(x_nhwc)
    dtype = jnp.dtype(x_nhwc.dtype)
    x, y = jnp.asarray(x_nhwc, dtype), jnp.asarray(target, dtype)
    p = _jnp_tree(params, dtype)
    k = convert.kernel_size_of(params)
    if flavour == "nnx":
        model = convert.to_nnx(p)
        logits, loss, grads = _nnx_forward_and_grads(model, x, y)
        grads = nnx.to_pure_dict(grads)
        manual = train.sgd_update(nnx.to_pure_dict(nnx.state(model, nnx.Param)), grads, lr)
        optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
        train.train_step(model, optimizer, x, y)        # the public step, as users call it
        stepped = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    elif flavour in ("linen", "functional"):
        apply = _linen_apply(k, dtype) if flavour == "linen" else functional.forward
        logits, loss, grads, manual, stepped = _pure_run(apply, p, x, y, lr)
    else:
        raise BadConfig(f"flavour must be one of {FLAVOURS}, found {flavour!r}")
    return {"logits": np.asarray(logits), "loss": np.asarray(loss),
            "grads": convert.flax_to_torch(grads), "manual": convert.flax_to_torch(manual),
            "sgd": convert.flax_to_torch(stepped)}


# --- deliberate faults, to show that the comparison can fail --------------------------------

def _fault_flatten(state: dict, params: dict) -> None:
    params["fc1"]["kernel"] = np.ascontiguousarray(state["fc1.weight"].T)   # forgot the flatten order


def _fault_transpose(state: dict, params: dict) -> None:
    w = state["conv1.weight"]                                               # reshape, not transpose
    params["conv1"]["kernel"] = w.reshape(w.shape[2], w.shape[3], w.shape[1], w.shape[0]).copy()


def _fault_element(state: dict, params: dict) -> None:
    kernel = params["conv1"]["kernel"].copy()               # one of 54 (or 150) elements off,
    kernel[0, 0, 0, 0] += 0.1 * np.max(np.abs(kernel))      # by a tenth of the tensor's largest
    params["conv1"]["kernel"] = kernel


FAULTS = {"flatten": _fault_flatten, "transpose": _fault_transpose, "element": _fault_element}


# --- the comparison --------------------------------------------------------------------------

@contextlib.contextmanager
def precision(tf32: bool):
    """Full float32 (TF32 off) in both frameworks unless ``tf32``; no effect on CPU."""
    with torch_tf32(tf32), jax.default_matmul_precision("default" if tf32 else "highest"):
        yield


def compare_results(flavour: str, ref: dict, got: dict, tol: Tolerance) -> list[Row]:
    """Rows for logits, loss, every gradient and the parameters after both updates."""
    rows = [row(q, flavour, {q: (got[q], ref[q])}, tol.rtol) for q in ("logits", "loss")]
    for name in ref["grads"]:
        rows.append(row(f"grad {name}", flavour, {f"grad {name}": (got["grads"][name], ref["grads"][name])},
                        tol.rtol))
    for key, label in (("manual", "params after w - lr*g"), ("sgd", "params after SGD step")):
        rows.append(row(label, flavour, {f"{label}: {n}": (got[key][n], ref[key][n]) for n in ref[key]}, tol.rtol))
    return rows


def compare(*, flavours=FLAVOURS, dtype="float32", kernel_size=3, batch=1, seed=0, lr=0.01,
            tf32=False, fault=None) -> tuple[list[Row], Tolerance]:
    """Run the tutorial in torch and each Flax flavour; return the diff rows and the tier."""
    import torch

    from torch_reference import Net as TorchNet
    dev = torch_device()
    tol = tolerance(dtype, "cpu" if dev.type == "cpu" else "gpu", tf32)
    torch.manual_seed(seed)
    net = TorchNet(kernel_size).to(getattr(torch, dtype)).to(dev)
    state = convert.state_to_numpy(net.state_dict())
    x, target = tutorial_data(batch, seed, dtype)
    params = convert.torch_to_flax(state)
    back = convert.flax_to_torch(params)
    rows = [row("params round trip", "-", {k: (back[k], state[k]) for k in state}, EXACT.rtol)]
    if fault is not None:
        FAULTS[fault](state, params)
    with precision(tf32):
        ref = torch_run(net, x, target, lr)
        for flavour in flavours:
            got = flax_run(flavour, params, convert.nchw_to_nhwc(x), target, lr)
            rows += compare_results(flavour, ref, got, tol)
    return rows, tol
