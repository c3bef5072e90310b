"""Run a torch model and its Flax port from the same weights, and diff every quantity.

``check(torch_model, flax_model, inputs, ...)`` is the harness: weights converted by module path
and layer type (``flax_lenet.porting.port``), then the outputs (eval and train mode where they differ),
the loss, the gradient of every parameter (compared in torch layout), the parameters after the
tutorial's manual update ``w - lr * g`` (on request) and after N ``torch.optim`` /
``flax_lenet.optim`` steps, each within its tolerance tier. ``compare`` is the tutorial's Net
through it, in each Flax flavour. Weights and data travel through numpy; no RNG stream is shared
between the frameworks.
"""

import copy
import functools
import math
from dataclasses import asdict, dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from flax_lenet import convert, functional, linen, optim, train
from flax_lenet.errors import BadConfig
from flax_lenet.porting import port
from flax_lenet.porting.common import (default_flax_input, diff, flax_kind, flax_target, has_modes, jax_array,
                                       nnx_train_mode, nonfinite, precision, torch_device, torch_train_mode,
                                       variables_dtype)
from flax_lenet.porting.names import FAULTS as FAULT_NAMES, FLAVOURS, LOSSES
from flax_lenet.porting.tolerances import (EXACT, TRAJECTORY_FLOAT32_RATIO, ZERO_GRADIENT, Tolerance,
                                           tolerance, trajectory_tolerance)

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Row:
    """One compared quantity: its largest difference, where it was, and its tolerance."""
    quantity: str
    flavour: str
    max_abs: float
    max_rel: float
    rtol: float
    note: str = ""       # which tensor held NaN or Inf, when one did ("" otherwise)
    tensor: str = ""     # the tensor (torch name) with the largest relative difference
    step: int | None = None   # for a quantity over several optimizer steps: the step of that difference
    float64: tuple | None = None   # float32 rows over rtol: (torch's, Flax's) distance from a float64 run
    copies: int = 1                # how many float32 copies of the start ``float64`` is the median over
    zero: tuple | None = None      # elements of a gradient zero in exact arithmetic: (their size in float64,
    #                                the larger float32 side's size there, the difference elsewhere), each
    #                                relative to the tensor's largest (the first two: the run's largest gradient)

    @property
    def within_rtol(self) -> bool:
        return self.max_rel <= self.rtol       # False for inf and NaN

    @property
    def ok(self) -> bool:
        """Within ``rtol`` of torch. Otherwise, for a gradient with elements zero in exact arithmetic
        (``zero``): both sides are rounding noise there, within ``rtol`` of the run's largest
        gradient, and within ``rtol`` of torch everywhere else;
        for a float32 row (``float64``): Flax's run is as close to a float64 run as torch's own
        run is, to within ``TRAJECTORY_FLOAT32_RATIO``."""
        if self.within_rtol:
            return True
        if not math.isfinite(self.max_rel):        # NaN or Inf: no rounding explains it
            return False
        if self.zero is not None:
            return bool(self.zero[1] <= self.rtol and self.zero[2] <= self.rtol)
        if self.float64 is None:
            return False
        torch_d, flax_d = self.float64
        return bool(flax_d <= TRAJECTORY_FLOAT32_RATIO * torch_d)          # False for NaN

    @property
    def mark(self) -> str:
        """'ok', 'FAIL', or 'ok*' (judged against a float64 run), 'ok0' (a gradient zero in exact arithmetic)."""
        if not self.ok:
            return "FAIL"
        return "ok" if self.within_rtol else "ok0" if self.zero is not None else "ok*"

    def explain(self) -> str:
        """What 'ok*', 'ok0' or a failure judged that way means for this row ('' otherwise)."""
        if self.within_rtol:
            return ""
        if self.zero is not None:
            size, noise, rest = self.zero
            return (f"0 {self.quantity}: zero in exact arithmetic where float64 gives {size:.1e} of the largest "
                    f"gradient; the larger float32 side is {noise:.1e} of it there, the difference elsewhere "
                    f"{rest:.1e}: " + ("within" if self.ok else "over") + f" {self.rtol:.0e}")
        if self.float64 is None:
            return ""
        torch_d, flax_d = self.float64
        runs = ("run is" if self.copies == 1 else
                f"runs are (the median over {self.copies} float32 copies of the start, each within one ulp)")
        return (f"* {self.quantity}: over the tolerance, so measured against a float64 run from the same start: "
                f"torch's own float32 {runs} {torch_d:.1e} from it, Flax's {flax_d:.1e}: "
                + (f"within {TRAJECTORY_FLOAT32_RATIO:g}x torch's (float32 runs part where a relu or max-pool "
                   "input is within rounding of a tie)" if self.ok else f"over {TRAJECTORY_FLOAT32_RATIO:g}x torch's"))

    def as_dict(self) -> dict:
        d = {**asdict(self), "ok": self.ok}
        float64, zero = d.pop("float64"), d.pop("zero")
        if float64 is not None:
            d["from_float64"] = {"torch": float64[0], "flax": float64[1], "ratio_bound": TRAJECTORY_FLOAT32_RATIO}
        if zero is not None:
            d["zero_in_exact_arithmetic"] = {"float64_size": zero[0], "float32_size": zero[1], "elsewhere": zero[2]}
        return d


def row(quantity: str, flavour: str, pairs: dict, rtol: float) -> Row:
    """One ``Row`` for ``{tensor name: (flax, torch)}``: the tensor with the largest relative
    difference, and a note naming every tensor that held NaN or Inf."""
    diffs = {name: diff(a, e) for name, (a, e) in pairs.items()}
    worst = max(diffs, key=lambda name: diffs[name][1])
    note = "; ".join(filter(None, (nonfinite(a, e, name) for name, (a, e) in pairs.items())))
    return Row(quantity, flavour, *diffs[worst], rtol, note, worst.rpartition(": ")[2].removeprefix("grad "))


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

def _torch_losses():
    import torch
    return dict(zip(LOSSES, (torch.nn.MSELoss(), torch.nn.CrossEntropyLoss())))


def torch_side(net, x, target, *, criterion, optimizer=None, manual_lr=None, modes: bool = False,
               batches=((), ())) -> dict:
    """One step of training in torch on a copy of ``net`` (left unchanged), in numpy.

    Returns ``{'output': {mode: array}, 'loss', 'grads': {name: array}, 'manual': state after
    ``w - manual_lr * g`` or None, 'steps': [(loss, state_dict)] after each optimizer step}``.
    The outputs are taken in eval mode and, with ``modes``, in train mode (Dropout off); loss,
    gradients and steps in train mode with Dropout off. ``batches``: ``(xs, ys)``, one batch per step.
    """

    import torch
    dev = next(net.parameters()).device
    x, y = torch.as_tensor(x).to(dev), torch.as_tensor(target).to(dev)
    outputs = {}
    if modes:
        work = copy.deepcopy(net).eval()
        with torch.no_grad():
            outputs["eval"] = work(x).detach().cpu().numpy()
    work = torch_train_mode(copy.deepcopy(net))
    work.zero_grad()
    out = work(x)
    loss = criterion(out, y)
    loss.backward()
    outputs["train" if modes else "-"] = out.detach().cpu().numpy()
    grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in work.named_parameters()}
    grads = convert.state_to_numpy(grads)
    manual = None
    if manual_lr is not None:
        with torch.no_grad():      # the tutorial's f.data.sub_(f.grad.data * learning_rate)
            for f in work.parameters():
                if f.grad is not None:
                    f.data.sub_(f.grad.data * manual_lr)
        manual = convert.state_to_numpy(work.state_dict())
    stepped = []
    if optimizer is not None:
        work = torch_train_mode(copy.deepcopy(net))
        opt = optimizer.torch(work.parameters())
        for xt, yt in zip(*batches):
            xt, yt = torch.as_tensor(xt).to(dev), torch.as_tensor(yt).to(dev)
            opt.zero_grad()
            step_loss = criterion(work(xt), yt)
            step_loss.backward()
            opt.step()
            stepped.append((step_loss.item(), convert.state_to_numpy(work.state_dict())))
    return {"output": outputs, "loss": loss.detach().cpu().numpy(), "grads": grads, "manual": manual,
            "steps": stepped}


# --- flax side -------------------------------------------------------------------------------

def _cross_entropy(logits, labels):
    """``nn.CrossEntropyLoss()``: the batch mean of ``-log_softmax(logits)[label]``."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


FLAX_LOSSES = dict(zip(LOSSES, (functional.mse_loss, _cross_entropy)))


def _model_loss(loss):
    """``loss_fn(model, x, y)`` for an output loss ``loss(out, y)``; MSE is ``train.loss_fn``."""
    if loss is functional.mse_loss:
        return train.loss_fn
    return functools.partial(_apply_loss, loss)


def _apply_loss(loss, model, x, y):
    return loss(model(x), y)


@nnx.jit(static_argnames="loss_fn")
def _nnx_forward_and_grads(model, x, y, loss_fn=train.loss_fn):
    """``model(x)``, the loss and its gradient, compiled as a user would run them."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    return model(x), loss, grads


@nnx.jit
def _nnx_eval(model, x):
    return model(x)


@functools.lru_cache(maxsize=None)
def _linen_apply(module):
    return lambda p, rest, xb: module.apply({"params": p, **rest}, xb)


@functools.lru_cache(maxsize=None)
def _function_apply(fn):
    return lambda p, rest, xb: fn(p, xb)


def _tx(optimizer):
    return optimizer.optax()       # one object per configuration (optim.Optimizer.optax caches it)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _pure_forward_and_grads(apply, loss, p, rest, x, y):
    """Output, loss and gradients of a Linen module or pure function, in one program."""
    value, grads = jax.value_and_grad(lambda q: loss(apply(q, rest, x), y))(p)
    return apply(p, rest, x), value, grads


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _pure_step(apply, loss, tx, p, state, rest, x, y):
    value, grads = jax.value_and_grad(lambda q: loss(apply(q, rest, x), y))(p)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, value


def _skeleton(flax_model):
    """The model's variables in the form ``port.load`` fills: the NNX module, or a variables dict."""
    kind = flax_kind(flax_model)
    if kind == "nnx":
        return nnx.clone(flax_model)
    if kind == "linen":
        return dict(flax_model[1])
    return {port.PARAMS: flax_model[1]}


def flax_side(flax_model, variables: dict, x, y, *, loss=functional.mse_loss, optimizer=None, manual_lr=None,
              modes: bool = False, step_fn=None, batches=((), ())) -> dict:
    """``torch_side`` in Flax, from converted ``variables`` ``{collection: {'path/leaf': array}}``.

    Returns the same keys, every state as flat Flax variables ``{collection: {'path/leaf': array}}``.
    For Linen and pure functions the batch statistics are constants (eval mode); train-mode
    BatchNorm needs an NNX module.
    """
    kind = flax_kind(flax_model)
    dtype = variables_dtype(variables)
    outputs, stepped = {}, []
    if kind == "nnx":
        model = port.load(nnx.clone(flax_model), variables, dtype=dtype)
        if modes:
            evaluated = nnx.clone(model)
            evaluated.eval()
            outputs["eval"] = np.asarray(_nnx_eval(evaluated, x))
        work = nnx_train_mode(nnx.clone(model))
        loss_fn = _model_loss(loss)
        out, value, grads = _nnx_forward_and_grads(work, x, y, loss_fn=loss_fn)
        grads = port.flat_keys(nnx.to_pure_dict(grads))
        params = port.flat_keys(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        if optimizer is not None:
            work = nnx_train_mode(nnx.clone(model))
            opt = nnx.Optimizer(work, _tx(optimizer), wrt=nnx.Param)
            for xt, yt in zip(*batches):
                step_loss = (step_fn or train.train_step)(work, opt, xt, yt, loss_fn=loss_fn)
                stepped.append((float(step_loss), port.flax_variables(work)))
        stats = port.flax_variables(model)[port.BATCH_STATS]
    else:
        full = port.load(_skeleton(flax_model), variables, dtype=dtype)
        p = full[port.PARAMS]
        rest = {c: v for c, v in full.items() if c != port.PARAMS}
        apply = _linen_apply(flax_model[0]) if kind == "linen" else _function_apply(flax_model[0])
        out, value, grads = _pure_forward_and_grads(apply, loss, p, rest, x, y)
        if modes:
            outputs["eval"] = np.asarray(out)
        grads, params = port.flat_keys(grads), port.flat_keys(p)
        stats = port.flat_keys(rest.get(port.BATCH_STATS, {}))      # constants: Linen and functions run in eval mode
        if optimizer is not None:
            tx = _tx(optimizer)
            q, state = p, tx.init(p)
            for xt, yt in zip(*batches):
                q, state, step_loss = _pure_step(apply, loss, tx, q, state, rest, xt, yt)
                stepped.append((float(step_loss), {port.PARAMS: port.flat_keys(q), port.BATCH_STATS: stats}))
    outputs["train" if modes else "-"] = np.asarray(out)
    manual = None if manual_lr is None else {port.PARAMS: train.sgd_update(params, grads, manual_lr),
                                             port.BATCH_STATS: stats}
    return {"output": outputs, "loss": np.asarray(value), "grads": {port.PARAMS: grads, port.BATCH_STATS: stats},
            "manual": manual, "steps": stepped}


def tutorial_model(flavour: str, kernel_size: int, dtype):
    """The tutorial Net in one flavour, with shapes only (``port.load`` fills in the weights)."""
    from flax_lenet.model import Net
    if flavour == "nnx":
        return nnx.eval_shape(lambda: Net(kernel_size, param_dtype=dtype, rngs=nnx.Rngs(0)))
    if flavour not in ("linen", "functional"):
        raise BadConfig(f"flavour must be one of {FLAVOURS}, found {flavour!r}")
    module = linen.Net(kernel_size, param_dtype=dtype)
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1), dtype))
    return (module, variables) if flavour == "linen" else (functional.forward, variables["params"])


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


FAULTS = dict(zip(FAULT_NAMES, (_fault_flatten, _fault_transpose, _fault_element)))


# --- the comparison --------------------------------------------------------------------------

def fault_tamper(fault):
    """``FAULTS[fault]`` as ``check``'s ``tamper(state, variables)``, or ``None``."""
    if fault is None:
        return None
    if fault not in FAULTS:
        raise BadConfig(f"fault must be one of {sorted(FAULTS)}, found {fault!r}")

    def tamper(state, variables):
        nested: dict = {}
        for key, a in variables[port.PARAMS].items():       # {'conv1/kernel': a} -> {'conv1': {'kernel': a}}
            layer, _, leaf = key.rpartition("/")
            nested.setdefault(layer, {})[leaf] = np.asarray(a)
        FAULTS[fault](state, nested)
        variables[port.PARAMS] = {f"{m}/{leaf}": a for m, leaves in nested.items() for leaf, a in leaves.items()}
    return tamper


def compare(*, flavours=FLAVOURS, dtype="float32", kernel_size=3, batch=1, seed=0, lr=0.01,
            tf32=False, fault=None) -> tuple[list[Row], Tolerance]:
    """Run the tutorial in torch and each Flax flavour through ``check``; return the rows and the tier."""
    import torch

    from torch_reference import Net as TorchNet
    for flavour in flavours:
        if flavour not in FLAVOURS:
            raise BadConfig(f"flavour must be one of {FLAVOURS}, found {flavour!r}")
    torch.manual_seed(seed)
    net = TorchNet(kernel_size)
    x, target = tutorial_data(batch, seed, dtype)
    models = {f: tutorial_model(f, kernel_size, jnp.dtype(dtype)) for f in flavours}
    report = check(net, models, x, target=target, optimizer=optim.Optimizer.of("sgd", lr=lr), steps=1,
                   dtype=dtype, manual_lr=lr, output_name="logits", tf32=tf32, tamper=fault_tamper(fault))
    return report.rows, report.tolerance


# --- the harness: any torch model against its Flax port ----------------------------------------

#: the quantities ``check`` reports, each with its own tolerance (override with ``rtol={...}``)
QUANTITIES = ("round trip", "output", "loss", "grad", "manual", "steps")


@dataclass
class Report:
    """What ``check`` found: one ``Row`` per quantity (per tensor for gradients)."""
    rows: list
    tolerance: Tolerance
    config: dict
    notices: list = field(default_factory=list)   # what may explain a difference, e.g. a fixed layer dtype
    steps_tolerance: Tolerance | None = None      # the tier of the steps rows (a training run's, past one step)
    divergences: list = field(default_factory=list)   # where a failing NNX port first departs (localise.Divergence)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failures(self) -> list:
        return [r for r in self.rows if not r.ok]

    def as_dict(self) -> dict:
        steps = self.steps_tolerance
        return {"config": self.config, "tolerance": {"rtol": self.tolerance.rtol, "reason": self.tolerance.reason},
                **({"steps_tolerance": {"rtol": steps.rtol, "reason": steps.reason}}
                   if steps is not None and steps != self.tolerance else {}),
                "rows": [r.as_dict() for r in self.rows], "notices": self.notices, "ok": self.ok,
                "first_difference": [d.as_dict() for d in self.divergences]}

    def to_json(self) -> str:
        import json
        return json.dumps(self.as_dict(), indent=2, default=str)

    def table(self) -> str:
        from flax_lenet.table import format_table
        body = [[r.quantity, r.flavour, r.tensor, "" if r.step is None else str(r.step), f"{r.max_abs:.3e}",
                 f"{r.max_rel:.3e}", f"{r.rtol:.0e}", r.mark] for r in self.rows]
        lines = [format_table(["quantity", "flavour", "worst tensor", "step", "max abs diff", "max rel diff",
                               "tolerance", "ok"], body)]
        lines += [f"not finite: {r.note}" for r in self.rows if r.note]
        lines += [r.explain() for r in self.rows if r.explain()]
        lines += [f"notice: {n}" for n in self.notices]
        lines += [d.line() for d in self.divergences]
        bad = len(self.failures)
        lines.append(f"all {len(self.rows)} quantities agree" if not bad
                     else f"{bad} of {len(self.rows)} quantities differ: " + describe_failures(self.failures))
        return "\n".join(lines)

    def assert_ok(self) -> None:
        """Raise ``AssertionError`` naming each failing quantity and its worst tensor (for pytest)."""
        if not self.ok:
            raise AssertionError(f"{len(self.failures)} of {len(self.rows)} quantities differ: "
                                 + describe_failures(self.failures)
                                 + "".join(f"\n{d.line()}" for d in self.divergences))


def describe_failures(rows) -> str:
    return "; ".join(f"{r.quantity} [{r.flavour}]" + (f" worst {r.tensor}" if r.tensor and r.tensor != r.quantity
                                                     else "")
                     + (f" at step {r.step}" if r.step else "")
                     + f": max rel {r.max_rel:.3e} > {r.rtol:.0e}" + (f" ({r.note})" if r.note else "")
                     for r in rows)


def _rtol_of(rtol, quantity: str, default: float) -> float:
    value = (rtol or {}).get(quantity, default)
    return value.rtol if isinstance(value, Tolerance) else float(value)


def _to_torch_layout(flax_out: np.ndarray, torch_out: np.ndarray) -> np.ndarray:
    """A Flax NHWC output compared with torch's NCHW one: moved to NCHW when only that fits."""
    if flax_out.shape != torch_out.shape and flax_out.ndim == 4 and \
            np.moveaxis(flax_out, -1, 1).shape == torch_out.shape:
        return convert.nhwc_to_nchw(flax_out)
    return flax_out


def check(torch_model, flax_model, inputs, *, target=None, loss="mse", optimizer=None, steps: int = 1,
          dtype: str = "float32", manual_lr=None, rtol=None, flatten="auto", name_map=None, flax_input=None,
          output_name="output", tf32=False, seed: int = 0, tamper=None, step_fn=None, batches=None,
          per_tensor_steps: bool = False, rules=None) -> Report:
    """Check a Flax port against its torch model: converted weights, outputs, loss, every gradient, N steps.

    Weights go torch -> Flax through ``flax_lenet.porting.port`` (by module path and layer type); inputs
    and targets through numpy. Both sides run in train mode with Dropout off for the loss, the
    gradients and the optimizer steps (RNG streams never match); outputs are compared in eval mode
    too when the model has layers whose behaviour depends on it (BatchNorm, Dropout).

    Args:
      torch_model: a torch ``nn.Module`` (left unchanged; a copy is cast to ``dtype``).
      flax_model: an NNX module, ``(linen_module, variables)``, ``(apply_fn, params)``
        (``apply_fn(params, x)``), or ``{label: one of those}`` to check several against one torch run.
        Only the structure is used; the weights come from ``torch_model``, so an NNX module may be
        built with ``nnx.eval_shape`` (``port.load``).
      inputs: a numpy batch in torch's layout (NCHW for images); Flax gets ``flax_input(inputs)``,
        by default NHWC for a 4-D float batch and the same array otherwise.
      target: the loss target in torch's layout; default a standard-normal array shaped like the
        output (``loss='mse'``) or integer classes (``'cross_entropy'``), drawn with ``seed``.
      loss: 'mse' | 'cross_entropy' | ``(torch_criterion, flax_loss(output, target))``.
      optimizer: a ``flax_lenet.optim.Optimizer`` (default SGD, lr 0.01); ``steps`` of it
        run on both sides through ``torch.optim`` and ``flax_lenet.optim``.
      dtype: 'float32' or 'float64' (needs ``jax_enable_x64``); ``tf32`` on a GPU keeps TF32 on.
      manual_lr: also compare the tutorial's manual update ``w - manual_lr * g``.
      rtol: per-quantity overrides ``{quantity: float | Tolerance}``, quantities in ``QUANTITIES``.
      flatten: 'auto' (``port.record_flattens``), or ``{linear path: (C, *S)}``, or ``None``.
      name_map: torch module path prefix -> Flax module path prefix (``flax_lenet.porting.port``).
      rules: ``{torch class name: port.Rule}`` to use before port's built-in ones, e.g.
        ``{'GRU': recurrent.GRU_TORCH_CELL}`` for a port with ``modules.TorchGRUCell``.
      output_name: the name of the output row. tamper: ``tamper(state, variables)`` edits the
        converted weights in place before the Flax side runs (to show a broken port failing).
      step_fn: the NNX training step, ``step_fn(model, optimizer, x, y, loss_fn=...)`` (default
        ``flax_lenet.train.train_step``, which takes any NNX module), or ``{label: step_fn}``.
      batches: ``(xs, ys)`` in torch's layout, one batch per optimizer step (default: ``inputs``
        and ``target`` at every step).
      per_tensor_steps: one row per tensor (``'params <name>'``) and one for the loss over the
        steps, each with its worst step, instead of one row for all parameters.

    Returns:
      A ``Report``: ``.ok``, ``.table()``, ``.to_json()``, ``.assert_ok()`` (names the tensor).
    """
    import torch

    if dtype not in DTYPES:
        raise BadConfig(f"dtype must be one of {DTYPES}, found {dtype!r}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise BadConfig("dtype float64 needs jax.config.update('jax_enable_x64', True) at start-up, found it off")
    unknown = sorted(set(rtol or {}) - set(QUANTITIES))
    if unknown:
        raise BadConfig(f"rtol: expected quantities among {QUANTITIES}, found {unknown}")
    models = flax_model if isinstance(flax_model, dict) else {flax_kind(flax_model): flax_model}
    optimizer = optimizer if optimizer is not None else optim.Optimizer.of("sgd", lr=0.01)
    dev = torch_device()
    tol_platform = "cpu" if dev.type == "cpu" else "gpu"
    tol = tolerance(dtype, tol_platform, tf32)
    net = copy.deepcopy(torch_model).to(getattr(torch, dtype)).to(dev)
    x = np.asarray(inputs)
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(dtype)
    x_torch = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
    if flatten == "auto":
        flatten = port.record_flattens(torch_train_mode(copy.deepcopy(net)).eval(), x_torch)
    if isinstance(loss, str):
        if loss not in FLAX_LOSSES:
            raise BadConfig(f"loss must be one of {sorted(FLAX_LOSSES)} or (torch_fn, flax_fn), found {loss!r}")
        criterion, flax_loss = _torch_losses()[loss], FLAX_LOSSES[loss]
    else:
        criterion, flax_loss = loss
    if target is None:
        with torch.no_grad():
            shape = tuple(copy.deepcopy(net).eval()(x_torch).shape)
        rng = np.random.default_rng(seed)
        target = (rng.integers(0, shape[-1], shape[:-1]) if loss == "cross_entropy"
                  else rng.standard_normal(shape).astype(dtype))
    target = np.asarray(target)
    modes = has_modes(net)

    state = convert.state_to_numpy(net.state_dict())
    variables = port.torch_to_flax(net, flatten=flatten, name_map=name_map, rules=rules)
    back = port.flax_to_torch(net, variables, flatten=flatten, name_map=name_map, rules=rules)
    rows = [row("params round trip", "-", {k: (back[k], state[k]) for k in state},
                _rtol_of(rtol, "round trip", EXACT.rtol))]
    if tamper is not None:
        tamper(state, variables)
    to_flax = flax_input or default_flax_input
    x_flax, y_flax = jax_array(to_flax(x)), jax_array(flax_target(target, to_flax))
    step_label = f"params after {optim.TORCH_CLASSES[optimizer.name]} step" + (f"s ({steps})" if steps > 1 else "")
    if batches is None:
        batches = ([x] * steps, [target] * steps)
    xs, ys = (np.asarray(b)[:steps] for b in batches)
    batches = (xs.astype(dtype) if np.issubdtype(xs.dtype, np.floating) else xs, ys)
    flax_batches = ([jax_array(to_flax(b)) for b in batches[0]], [jax_array(flax_target(b, to_flax)) for b in ys])
    with precision(tf32):
        ref = torch_side(net, x, target, criterion=criterion, optimizer=optimizer,
                         manual_lr=manual_lr, modes=modes, batches=batches)
        sides = {}
        for label, model in models.items():
            fn = step_fn.get(label) if isinstance(step_fn, dict) else step_fn
            got = flax_side(model, variables, x_flax, y_flax, loss=flax_loss, optimizer=optimizer,
                            manual_lr=manual_lr, modes=modes, step_fn=fn, batches=flax_batches)
            sides[label] = in_torch_layout(net, got, ref, flatten, name_map, rules)
        steps_tol = trajectory_tolerance(dtype, tol_platform, tf32) if steps > 1 else tol
        judge = functools.partial(_rows, rtol=rtol, tol=tol, steps_rtol=_rtol_of(rtol, "steps", steps_tol.rtol),
                                  output_name=output_name, step_label=step_label, per_tensor_steps=per_tensor_steps)
        found = {label: judge(label, ref, side) for label, side in sides.items()}
        notices = []
        if dtype == "float64" or not all(r.within_rtol for rs in found.values() for r in rs):
            # judge what rounding alone explains against a float64 torch run from the same start
            truth = ref if dtype == "float64" else torch_side(
                copy.deepcopy(net).double(), _float64(x), _float64(target), criterion=criterion,
                optimizer=optimizer, manual_lr=manual_lr, modes=modes,
                batches=tuple([_float64(b) for b in part] for part in batches))
            zero = zero_gradients(truth["grads"], ZERO_GRADIENT.rtol, ref["grads"],
                                  *(side["grads"] for side in sides.values()))
            notices += [f"grad {name} is zero in exact arithmetic at {int(mask.sum())} of {mask.size} elements "
                        f"(a float64 run gives at most {ZERO_GRADIENT.rtol:.0e} of the largest gradient there): "
                        "rounding noise, left out of the steps, where an optimizer that divides by a gradient's "
                        "size (Adam) turns it into steps" for name, mask in zero.items()
                        if ref["steps"] and np.any(ref["grads"][name][mask] != 0)]
            judge = functools.partial(judge, zero=zero, truth_grads=truth["grads"])
            found = {label: judge(label, ref, side) for label, side in sides.items()}
            if dtype == "float32":
                torch_d = judge("torch", truth, ref)
                for label, rs in found.items():
                    flax_d = judge(label, truth, sides[label])
                    found[label] = [r if r.within_rtol or r.zero else replace(r, float64=(t.max_rel, f.max_rel))
                                    for r, t, f in zip(rs, torch_d, flax_d)]
                if not all(r.ok for rs in found.values() for r in rs):
                    found = _judge_by_copies(found, net, truth, ref, judge, models, tamper, rules, x=x, target=target,
                                             criterion=criterion, optimizer=optimizer, manual_lr=manual_lr,
                                             modes=modes, batches=batches, flatten=flatten, name_map=name_map,
                                             flax_loss=flax_loss, step_fn=step_fn, flax_batches=flax_batches,
                                             x_flax=x_flax, y_flax=y_flax, to_flax=to_flax)
        rows += [r for rs in found.values() for r in rs]
        # only for a failing NNX port: where it first departs (a port that agrees pays nothing)
        from flax_lenet.porting.localise import first_divergence
        divergences = [d for label, rs in found.items() if flax_kind(models[label]) == "nnx"
                       and not all(r.ok for r in rs)
                       for d in first_divergence(net, models[label], x, target, variables=variables, flatten=flatten,
                                                 name_map=name_map, criterion=criterion, flax_loss=flax_loss,
                                                 rtol=_rtol_of(rtol, "output", tol.rtol), dtype=dtype,
                                                 flax_input=to_flax, tf32=tf32)]
    config = {"torch": type(torch_model).__name__, "flax": sorted(models), "dtype": dtype,
              "input_shape": list(x.shape), "loss": loss if isinstance(loss, str) else "custom",
              "optimizer": str(optimizer), "steps": steps, "device": jax.default_backend(), "flatten": flatten}
    notices += [n for m in models.values() for n in fixed_dtypes(m, dtype)]
    return Report(rows, tol, config, notices, steps_tolerance=steps_tol, divergences=divergences)


#: float32 copies of the start a failing float32 row is judged over (the float32 grid's, benchmarks/accuracy.py)
MEMBERS = 5


def float32_copies(state64: dict, members: int) -> list[dict]:
    """The nearest float32 rounding of ``state64``, then ``members - 1`` random roundings (each
    element to the float32 just below or just above its float64 value; seeds 1, 2, ...): each
    within one float32 ulp of the start, as valid a float32 copy of it as the nearest one."""
    copies = [{n: v.astype(np.float32) for n, v in state64.items()}]
    for m in range(1, members):
        rng = np.random.default_rng(m)
        copy_ = {}
        for n, v in state64.items():
            near = v.astype(np.float32)
            toward = np.where(near.astype(np.float64) > v, -np.inf, np.inf).astype(np.float32)
            other = np.nextafter(near, toward)
            copy_[n] = np.where(rng.random(v.shape) < 0.5, near, other)
        copies.append(copy_)
    return copies


def _judge_by_copies(found, net, truth, ref, judge, models, tamper, rules, *, x, target, criterion, optimizer,
                     manual_lr, modes, batches, flatten, name_map, flax_loss, step_fn, flax_batches, x_flax,
                     y_flax, to_flax):
    """Judge float32 rows that one run per framework failed as a distribution: over ``MEMBERS``
    float32 copies of the start (the float32 grid's, ``benchmarks/accuracy.py``), by the median of
    each side's distance from the float64 run. One run's distance is a draw: a relu or max-pool
    input within rounding of a tie switches in one run and not another, and that run alone leaves
    the path, 1e-3..1 away where the others stay near 1e-6 (either framework's, torch's too with
    its oneDNN kernels on or off: ``benchmarks/adam_outliers.py``). A row is one tensor, whose
    usual distance can be 1e-6, so one far copy in five moves a geometric mean by a decade; the
    median ignores up to two. A port error moves every Flax copy, and the median with them."""
    import torch
    state = convert.state_to_numpy(net.state_dict())
    float_state = {n: a.astype(np.float64) for n, a in state.items() if np.issubdtype(a.dtype, np.floating)}
    torch_runs, flax_runs = [judge("torch", truth, ref)], {label: [] for label in found}
    for copy_ in float32_copies(float_state, MEMBERS)[1:]:
        net_m = copy.deepcopy(net)
        net_m.load_state_dict({n: torch.as_tensor(copy_.get(n, a)) for n, a in state.items()})
        ref_m = torch_side(net_m, x, target, criterion=criterion, optimizer=optimizer, manual_lr=manual_lr,
                           modes=modes, batches=batches)
        torch_runs.append(judge("torch", truth, ref_m))
        variables = port.torch_to_flax(net_m, flatten=flatten, name_map=name_map, rules=rules)
        if tamper is not None:
            tamper(convert.state_to_numpy(net_m.state_dict()), variables)
        for label, model in models.items():
            fn = step_fn.get(label) if isinstance(step_fn, dict) else step_fn
            got = flax_side(model, variables, x_flax, y_flax, loss=flax_loss, optimizer=optimizer,
                            manual_lr=manual_lr, modes=modes, step_fn=fn, batches=flax_batches)
            flax_runs[label].append(judge(label, truth, in_torch_layout(net, got, ref, flatten, name_map, rules)))


    judged = {}
    for label, rs in found.items():
        out = []
        for i, r in enumerate(rs):
            if r.float64 is None or r.ok:
                out.append(r)
                continue
            t = [r.float64[0]] + [run[i].max_rel for run in torch_runs[1:]]
            f = [r.float64[1]] + [run[i].max_rel for run in flax_runs[label]]
            out.append(replace(r, float64=(float(np.median(t)), float(np.median(f))), copies=len(t)))
        judged[label] = out
    return judged


def fixed_dtypes(flax_model, dtype: str) -> list[str]:
    """Notices for NNX layers whose computation dtype was fixed when built (e.g. ``nnx.Embed``'s
    ``dtype`` defaults to its ``param_dtype``) and is not ``dtype``: they compute in that dtype
    whatever weights are loaded."""
    if flax_kind(flax_model) != "nnx":
        return []
    found = []
    for path, m in nnx.iter_modules(flax_model):
        fixed = getattr(m, "dtype", None)
        if fixed is not None and isinstance(m, nnx.Module) and jnp.dtype(fixed) != jnp.dtype(dtype):
            where = ".".join(map(str, path)) or "the model"
            found.append(f"{type(m).__name__} at {where} computes in {jnp.dtype(fixed)} (its dtype, fixed when "
                         f"built); build it with param_dtype={dtype} (or dtype={dtype}) to compare in {dtype}")
    return found


def _float64(a):
    """A float array as float64 (exact from float32); integers (tokens, classes) as they are."""
    a = np.asarray(a)
    return a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a


def in_torch_layout(net, got: dict, ref: dict, flatten, name_map, rules=None) -> dict:
    """``flax_side``'s results in the form and layout of ``torch_side``'s (states as torch ``state_dict``s)."""
    def state(variables):
        return port.flax_to_torch(net, variables, flatten=flatten, name_map=name_map, rules=rules)

    return {"output": {mode: _to_torch_layout(np.asarray(got["output"][mode]), e) for mode, e in ref["output"].items()},
            "loss": got["loss"], "grads": state(got["grads"]),
            "manual": None if got["manual"] is None else state(got["manual"]),
            "steps": [(loss, state(variables)) for loss, variables in got["steps"]]}


def zero_gradients(grads: dict, rtol: float, *others: dict) -> dict[str, np.ndarray]:
    """``{name: mask}`` of the gradient elements of a float64 run ``grads`` that are zero in
    exact arithmetic yet rounding noise in a run: at most ``rtol`` (``ZERO_GRADIENT``) of the
    run's largest gradient, and not exactly 0 in ``grads`` or one of the ``others`` (a relu's
    dead unit is exactly 0 everywhere and needs nothing). A bias before a normalisation has
    them, and attention's key bias (a softmax ignores a constant added to a row), a slice of
    torch's packed ``in_proj_bias``; Adam divides their noise by its own size into full steps.
    Tensors with none are left out."""
    scale = max((float(np.max(np.abs(g))) for g in grads.values() if np.size(g)), default=0.0)
    masks = {}
    for name, g in grads.items():
        g = np.asarray(g)
        noise = np.logical_or.reduce([g != 0] + [np.asarray(o[name]) != 0 for o in others])
        masks[name] = (np.abs(g) <= rtol * scale) & noise
    return {name: m for name, m in masks.items() if scale > 0 and m.any()}


def _rows(label, ref, side, *, rtol, tol, steps_rtol, output_name, step_label, per_tensor_steps,
          zero=None, truth_grads=None) -> list[Row]:
    """The rows for one side (``side``, in torch layout) against the reference run ``ref``.

    Gradient elements in ``zero`` (``zero_gradients`` of the float64 run ``truth_grads``) are
    judged as rounding noise (``Row.zero``) and left out of the steps: an optimizer that divides
    by a gradient's size turns that noise into steps."""
    zero = zero or {}
    rows = []
    out_tol = _rtol_of(rtol, "output", tol.rtol)
    for mode, expected in ref["output"].items():
        name = output_name if mode == "-" else f"{output_name} ({mode})"
        rows.append(row(name, label, {name: (side["output"][mode], expected)}, out_tol))
    rows.append(row("loss", label, {"loss": (side["loss"], ref["loss"])}, _rtol_of(rtol, "loss", tol.rtol)))
    scale = max((float(np.max(np.abs(g))) for g in ref["grads"].values() if np.size(g)), default=0.0)
    for name in ref["grads"]:
        r = row(f"grad {name}", label, {f"grad {name}": (side["grads"][name], ref["grads"][name])},
                _rtol_of(rtol, "grad", tol.rtol))
        if name in zero and not r.within_rtol:
            a, e, m = np.asarray(side["grads"][name]), np.asarray(ref["grads"][name]), zero[name]
            noise = max(float(np.max(np.abs(a[m]))), float(np.max(np.abs(e[m]))))
            rest = diff(np.where(m, 0, a), np.where(m, 0, e))[0] / max(float(np.max(np.abs(e))), 1e-300)
            size = float(np.max(np.abs(truth_grads[name][m]))) if truth_grads else 0.0
            r = replace(r, zero=(size / scale, noise / scale, rest))
        rows.append(r)
    if ref["manual"] is not None:
        q = "params after w - lr*g"
        rows.append(row(q, label, {f"{q}: {n}": (side["manual"][n], ref["manual"][n]) for n in ref["manual"]},
                        _rtol_of(rtol, "manual", tol.rtol)))
    if not ref["steps"]:
        return rows

    def compared(state):
        return {n: np.where(zero[n] & np.isfinite(a), 0, a) if n in zero else a for n, a in state.items()
                if n.rpartition(".")[2] not in port.SKIPPED}             # a NaN or Inf is never left out

    if per_tensor_steps:
        runs = [[(loss, compared(state)) for loss, state in run] for run in (ref["steps"], side["steps"])]
        return rows + diff_steps(label, *runs, steps_rtol)
    worst = None
    for step, ((t_loss, t_state), (f_loss, f_state)) in enumerate(zip(ref["steps"], side["steps"]), start=1):
        f_state = compared(f_state)
        pairs = {f"{step_label}: {n}": (f_state[n], t) for n, t in compared(t_state).items()}
        if len(ref["steps"]) > 1:
            pairs[f"{step_label}: loss"] = (f_loss, t_loss)
        r = row(step_label, label, pairs, steps_rtol)
        if worst is None or not r.max_rel <= worst.max_rel:
            worst = replace(r, step=step if len(ref["steps"]) > 1 else None)
    return rows + [worst]


def diff_steps(label: str, torch_run, flax_run, rtol: float) -> list[Row]:
    """Per quantity (the loss, then every tensor of the torch state): its worst step over two runs
    of ``(loss, state in torch layout)``, one pair per step."""
    worst: dict[str, Row] = {}
    for step, ((t_loss, t_state), (f_loss, f_state)) in enumerate(zip(torch_run, flax_run), start=1):
        pairs = {"loss": (f_loss, t_loss), **{f"params {n}": (f_state[n], t_state[n]) for n in t_state
                                               if n.rpartition(".")[2] not in port.SKIPPED}}
        for name, (f, t) in pairs.items():
            max_abs, max_rel = diff(f, t)
            if name not in worst or max_rel > worst[name].max_rel:
                note = nonfinite(f, t, f"{name} at step {step}")
                worst[name] = Row(name, label, max_abs, max_rel, rtol, note, name.removeprefix("params "), step)
    return list(worst.values())
