"""Where a Flax port first departs from its torch model: the first module, forward and backward.

``parity.check`` says *that* a port differs; ``first_divergence`` says *where*. Both models run
from the same converted weights while every module's input and output is recorded:

* torch: forward pre-hooks and forward hooks on every module of a copy of the model
  (https://pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module.register_forward_hook),
  removed afterwards.
* Flax NNX: on a clone of the loaded model (``nnx.clone``) every callable submodule that
  ``nnx.iter_modules`` finds is put inside a ``_Recorder`` module that calls it and records its
  first positional argument and its result: model surgery, https://flax.readthedocs.io/en/stable/guides/surgery.html.
* Gradients: both sides add a zero "probe" to every module's input and output; the loss's gradient
  w.r.t. a probe is the gradient w.r.t. that input (through this module only) or that output
  (``torch.autograd.grad``; ``nnx.grad``, https://flax.readthedocs.io/en/stable/api_reference/flax.nnx/transforms.html).

Modules are matched by path (torch ``p``, Flax ``port.rename(p, name_map)``; list items are
numbers: ``blocks.0``) and compared with ``common.diff``, a Flax channels-last array moved to
channels-first where that fits, a Linear's input also in its declared flatten order. Only modules
called once on each side with an array as first argument take part; of a tuple output
(``nn.MultiheadAttention``'s, ``nn.LSTM``'s) the first item is compared.

The rule, forward, in the order torch's pre-hooks fire (a container before its children): the
first module whose input agrees and whose output differs (or has another shape), then within it
the first descendant that does the same, down to the innermost. A module whose *input* differs
while everything before it agreed marks a difference *between* modules (a reshape, a flatten, a
function in the parent's forward), reported at that module. Backward: the same in the reverse
order of completion, the gradient w.r.t. the output in the place of the input and the one w.r.t.
the input in the place of the output; looked at only while the model's output agrees (else the
loss's gradient differs already). The forward runs in train mode with Dropout off (as
``parity.check``'s gradients), and in eval mode too when the model has mode-dependent layers and
train mode localised nothing. Parameter-only differences (e.g. running statistics) are not localised.
"""

import contextvars
import copy
from collections import Counter
from dataclasses import asdict, dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_lenet import functional
from flax_lenet.porting import common, port

#: what to look at first when a torch layer of this type is where the port departs
HINTS = {
    "LayerNorm": "check epsilon (torch 1e-5, nnx.LayerNorm 1e-6)",
    "GroupNorm": "check epsilon and num_groups",
    **dict.fromkeys(("BatchNorm1d", "BatchNorm2d"), "check epsilon, momentum and the running statistics"),
    "MaxPool2d": "check ceil_mode / padding",
    "AvgPool2d": "check ceil_mode / padding / count_include_pad",
    "Conv1d": "check padding / stride / dilation",
    "Conv2d": "check padding / stride / dilation ('SAME' at stride 2 pads (0, 1), torch's padding=1 (1, 1))",
    "ConvTranspose2d": "check padding (k - 1 - p per side) and the kernel flip",
    "Linear": "check the weight transpose and the flatten order of its input",
    "GELU": "check approximate (torch: erf, jax.nn.gelu: tanh)",
    "MultiheadAttention": "check the q/k/v order, the head split and the mask (torch True = masked, Flax True = attend)",
    **dict.fromkeys(("LSTM", "GRU"), "check batch_first / time_major, the gate order and the biases"),
}


@dataclass(frozen=True)
class Divergence:
    """Where the port departs. Forward: the module's output differs while its input agrees.
    Backward: its gradient w.r.t. the input differs while the one w.r.t. its output agrees.
    ``between``: the input (backward: the output's gradient) already differs although everything
    before it agreed, so the difference lies between this module and the previous one."""
    direction: str                  # 'forward' | 'backward'
    torch_path: str
    flax_path: str
    torch_type: str
    flax_type: str
    max_rel_out: float | None       # output (backward: gradient w.r.t. the input); None when between or shapes differ
    max_rel_in: float | None        # input (backward: gradient w.r.t. the output); None when its shapes differ
    between: bool = False
    shapes: tuple | None = None     # (flax shape, torch shape) of what differs, when the shapes differ
    hint: str = ""

    def as_dict(self) -> dict:
        return {**asdict(self), "line": self.line()}

    def line(self) -> str:
        forward = self.direction == "forward"
        where = (self.torch_path or "the model") + ("" if self.flax_path == self.torch_path
                                                    else f" ↔ {self.flax_path or 'the model'}")
        out, inp = ("output", "input") if forward else ("gradient w.r.t. input", "gradient w.r.t. output")
        what = (f"shape flax {self.shapes[0]} vs torch {self.shapes[1]}" if self.shapes is not None
                else f"max rel {self.max_rel_in if self.between else self.max_rel_out:.1e}")
        body = (f"{inp} {what} although everything {'before' if forward else 'after'} it agrees" if self.between
                else f"{out} {what}, {inp} agrees ({self.max_rel_in:.0e})")
        head = "first difference" + ("" if forward else " (backward)")
        return (f"{head}: {where} (torch {self.torch_type} ↔ flax {self.flax_type}): {body}"
                + (f"; {self.hint}" if self.hint else ""))


# --- recording ---------------------------------------------------------------------------------

class _Tape:
    """Per module path: calls, call order, completion order, type, input, output and their gradients."""

    def __init__(self, probes=None, traced=False):
        self.probes, self.traced, self.calls, self.types = probes, traced, Counter(), {}
        self.order, self.done, self.inputs, self.outputs, self.grad_in, self.grad_out = [], [], {}, {}, {}, {}

    def call(self, module, path, args, kwargs):
        """A Flax module called between the recording steps (torch's run the same steps in hooks)."""
        self.calls[path] += 1
        x = args[0] if args else None
        if self.calls[path] > 1 or not isinstance(x, jax.Array):
            return module(*args, **kwargs)
        self.order.append(path)
        self.types[path] = type(module).__name__
        if self.probes is None:
            self._keep(self.inputs, path, x)
        elif (path, "in") in self.probes:
            x = x + self.probes[path, "in"]
        out = module(x, *args[1:], **kwargs)
        first, rebuild = _first_array(out, jax.Array)
        if first is not None:
            self.done.append(path)
            if self.probes is None:
                self._keep(self.outputs, path, first)
            elif (path, "out") in self.probes:
                out = rebuild(first + self.probes[path, "out"])
        return out

    def _keep(self, record, path, a):
        if self.traced:                                      # returned by the program (see _recorded)
            record[path] = a
            return
        try:
            record[path] = np.asarray(a)
        except jax.errors.TracerArrayConversionError:      # inside the model's own jit / scan: not recorded
            pass


_TAPE: contextvars.ContextVar = contextvars.ContextVar("flax_lenet_localise_tape", default=None)


class _Recorder(nnx.Module):
    """``inner`` in its place; while a tape is active its calls are recorded."""

    def __init__(self, inner, path: str):
        self.inner, self.path = inner, path

    def __call__(self, *args, **kwargs):
        tape = _TAPE.get()
        return self.inner(*args, **kwargs) if tape is None else tape.call(self.inner, self.path, args, kwargs)

    def __getattr__(self, name):       # the wrapped module's other attributes and methods
        inner = vars(self).get("inner")
        if inner is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(inner, name)


def _wrap(model) -> _Recorder:
    """Every callable submodule of ``model`` (changed in place: pass a clone) in a ``_Recorder``."""
    modules = dict(nnx.iter_modules(model))
    for path, m in modules.items():
        parent = modules.get(path[:-1]) if path else None
        if parent is None or not callable(m):
            continue
        rec = _Recorder(m, ".".join(map(str, path)))
        if isinstance(parent, (nnx.List, nnx.Dict)):
            parent[path[-1]] = rec
        else:
            setattr(parent, path[-1], rec)
    return _Recorder(model, "")


def _first_array(out, kind):
    """``(array, rebuild)``: a module's output array, or the first item of a tuple output
    (``nn.MultiheadAttention``'s ``(output, weights)``, ``nn.LSTM``'s ``(output, (h, c))``), and
    how to put a changed one back; ``(None, None)`` for anything else."""
    if isinstance(out, kind):
        return out, lambda a: a
    if isinstance(out, tuple) and out and isinstance(out[0], kind):
        return out[0], lambda a: (a, *out[1:])
    return None, None


def _run_recorded(wrapped, x, tape=None):
    """Run ``wrapped(x)`` on a tape (a new traced one by default); its inputs and outputs."""
    tape = tape or _Tape(traced=True)
    token = _TAPE.set(tape)
    try:
        wrapped(x)
    finally:
        _TAPE.reset(token)
    return tape.inputs, tape.outputs


_record_program = nnx.jit(_run_recorded)


def _recorded(model, x) -> "_Tape | None":
    """The tape of ``model(x)`` computed as one compiled program, or ``None`` where it cannot be:
    a model that raises, branches on values, or keeps arrays inside its own ``jit`` or ``scan``
    (``nnx.eval_shape`` first records the calls without computing; the program then gives values)."""
    tape = _Tape(traced=True)
    try:
        nnx.eval_shape(lambda w: _run_recorded(w, x, tape), _wrap(nnx.clone(model)))
        inputs, outputs = _record_program(_wrap(nnx.clone(model)), x)
    except Exception:
        return None
    tape.traced = False
    tape.inputs, tape.outputs = ({p: np.asarray(a) for p, a in d.items()} for d in (inputs, outputs))
    return tape


def _probed_loss(wrapped, probes, x, y, loss):
    """``loss(wrapped(x), y)`` with each probe added where the tape says."""
    token = _TAPE.set(_Tape(probes))
    try:
        return loss(wrapped(x), y)
    finally:
        _TAPE.reset(token)


_probe_grads = nnx.jit(nnx.grad(_probed_loss, argnums=1), static_argnums=4)


def _flax_tape(model, x, y, loss, grads: bool) -> _Tape:
    """Record ``model(x)``; with ``grads``, then d loss / d each probe through ``nnx.grad``.

    Each is one ``nnx.jit`` program: run op by op, every op of the model and of its backward pass
    on each new shape is compiled on its own, hundreds of small programs for one model. Where the
    forward cannot be one program (``_recorded``) it runs op by op, so that what ran before a
    failing module is still recorded."""
    tape = _recorded(model, x)
    if tape is None:                   # op by op: what runs before a failure is still recorded
        tape = _Tape()
        token = _TAPE.set(tape)
        try:
            _wrap(nnx.clone(model))(x)
        except Exception:              # e.g. a shape that no longer fits: what ran so far is recorded
            return tape
        finally:
            _TAPE.reset(token)
    if grads:
        probes = {(p, side): np.zeros_like(a) for side, rec in (("in", tape.inputs), ("out", tape.outputs))
                  for p, a in rec.items() if tape.calls[p] == 1 and jnp.issubdtype(a.dtype, jnp.floating)}

        try:
            found = _probe_grads(_wrap(nnx.clone(model)), probes, x, y, loss)
        except Exception:              # a model that reads a weight in Python: op by op
            found = nnx.grad(_probed_loss, argnums=1)(_wrap(nnx.clone(model)), probes, x, y, loss)
        for (p, side), g in found.items():
            (tape.grad_in if side == "in" else tape.grad_out)[p] = np.asarray(g)
    return tape


def _torch_tape(net, x, y, criterion, grads: bool) -> _Tape:
    """The same record of torch, from forward (pre-)hooks; probes added by the hooks' return values."""
    import torch
    tape, probes, handles = _Tape(), {}, []

    def pre(path):
        def hook(module, args):
            tape.calls[path] += 1
            if tape.calls[path] > 1 or not args or not torch.is_tensor(args[0]):
                return None
            tape.order.append(path)
            tape.types[path] = type(module).__name__
            tape.inputs[path] = args[0].detach().cpu().numpy().copy()
            if grads and args[0].is_floating_point():
                probes[path, "in"] = p = torch.zeros_like(args[0], requires_grad=True)
                return (args[0] + p, *args[1:])
        return hook

    def post(path):
        def hook(module, args, out):
            first, rebuild = _first_array(out, torch.Tensor)
            if tape.calls[path] != 1 or path in tape.done or path not in tape.inputs or first is None:
                return None
            tape.done.append(path)
            tape.outputs[path] = first.detach().cpu().numpy().copy()
            if grads and first.is_floating_point():
                probes[path, "out"] = p = torch.zeros_like(first, requires_grad=True)
                return rebuild(first + p)
        return hook

    for path, m in net.named_modules():
        handles += [m.register_forward_pre_hook(pre(path)), m.register_forward_hook(post(path))]
    try:
        with torch.set_grad_enabled(grads):
            out = net(x)
            if grads:
                keys = list(probes)
                found = torch.autograd.grad(criterion(out, y), [probes[k] for k in keys], allow_unused=True)
                for (p, side), g in zip(keys, found):
                    g = torch.zeros_like(probes[p, side]) if g is None else g
                    (tape.grad_in if side == "in" else tape.grad_out)[p] = g.detach().cpu().numpy()
    finally:
        for h in handles:
            h.remove()
    return tape


# --- comparing ---------------------------------------------------------------------------------

def _compare(flax_a, torch_a, flat=None):
    """``(max rel, None)`` over the layouts that fit (as is; channels last -> first; a Linear's
    input from (*S, C) to torch's (C, *S) flatten order), or ``(None, (flax shape, torch shape))``."""
    a, e = np.asarray(flax_a), np.asarray(torch_a)
    views = [a] + ([np.moveaxis(a, -1, 1)] if a.ndim >= 3 else [])
    if flat and a.ndim == 2 and a.shape[1] == int(np.prod(flat)):
        views.append(np.moveaxis(a.reshape(a.shape[0], *flat[1:], flat[0]), -1, 1).reshape(a.shape[0], -1))
    fits = [v for v in views if v.shape == e.shape]
    if not fits:
        return None, (a.shape, e.shape)
    return min(common.diff(v, e)[1] for v in fits), None


def _walk(order, upstream, local, rtol):
    """``(path, between, upstream result, local result)``, or None (module docstring: the rule)."""
    def agrees(r):
        return r[1] is None and r[0] <= rtol

    found = None
    for p in order:
        if found is not None and not (p != found[0] and (found[0] == "" or p.startswith(found[0] + "."))):
            continue
        up = upstream(p)
        if up is None:
            continue
        if not agrees(up):
            return p, True, up, None
        here = local(p)
        if here is not None and not agrees(here):
            found = (p, False, up, here)
    return found


def _localise(direction, t, f, name_map, flatten, rtol):
    renamed = {p: port.rename(p, name_map) for p in t.order}
    pairs = {p: q for p, q in renamed.items() if t.calls[p] == f.calls[q] == 1 and q in f.types}

    def compare(t_rec, f_rec, p, flat=None):
        q = pairs[p]
        return _compare(f_rec[q], t_rec[p], flat) if p in t_rec and q in f_rec else None

    if direction == "forward":
        hit = _walk([p for p in t.order if p in pairs],
                    lambda p: compare(t.inputs, f.inputs, p, (flatten or {}).get(p)),
                    lambda p: compare(t.outputs, f.outputs, p), rtol)
    else:
        hit = _walk([p for p in reversed(t.done) if p in pairs], lambda p: compare(t.grad_out, f.grad_out, p),
                    lambda p: compare(t.grad_in, f.grad_in, p, (flatten or {}).get(p)), rtol)
    if hit is None:
        return None
    p, between, up, here = hit
    if between:
        hint = ("check the reshape / flatten / function before it" if direction == "forward"
                else "check the gradient of the code after it")
    else:
        hint = HINTS.get(t.types[p], "")
    return Divergence(direction, p, pairs[p], t.types[p], f.types[pairs[p]], None if between else here[0], up[0],
                      between, (up if between else here)[1], hint)


def first_divergence(torch_model, flax_model, x, target, *, variables=None, flatten="auto", name_map=None,
                     criterion=None, flax_loss=None, rtol: float = 1e-5, dtype: str = "float32",
                     flax_input=None, tf32=False) -> list[Divergence]:
    """The first module where an NNX port departs from ``torch_model``: forward, then backward.

    Arguments as ``parity.check``'s (``x`` and ``target`` in torch's layout; ``variables`` the
    converted weights, by default ``port.torch_to_flax``; ``criterion`` / ``flax_loss`` default to
    MSE). Returns ``[]`` when nothing localises, or when ``flax_model`` is not an NNX module.
    """
    import torch
    if common.flax_kind(flax_model) != "nnx":
        return []
    net = copy.deepcopy(torch_model).to(getattr(torch, dtype))
    dev = next(net.parameters(), torch.empty(0)).device
    x = np.asarray(x)
    x = x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x
    target = np.asarray(target)
    x_t, y_t = torch.from_numpy(np.ascontiguousarray(x)).to(dev), torch.as_tensor(target).to(dev)
    if flatten == "auto":
        flatten = port.record_flattens(copy.deepcopy(net).eval(), x_t)
    if variables is None:
        variables = port.torch_to_flax(net, flatten=flatten, name_map=name_map)
    criterion = criterion if criterion is not None else torch.nn.MSELoss()
    flax_loss = flax_loss if flax_loss is not None else functional.mse_loss
    model = port.load(nnx.clone(flax_model), variables, dtype=common.variables_dtype(variables))
    to_flax = flax_input or common.default_flax_input
    x_f, y_f = common.jax_array(to_flax(x)), common.jax_array(common.flax_target(target, to_flax))
    with common.precision(tf32):
        t = _torch_tape(common.torch_train_mode(copy.deepcopy(net)), x_t, y_t, criterion, grads=True)
        f = _flax_tape(common.nnx_train_mode(nnx.clone(model)), x_f, y_f, flax_loss, grads=True)
        forward = (t, f)
        found = _localise("forward", t, f, name_map, flatten, rtol)
        if found is None and common.has_modes(net):
            evaluated = nnx.clone(model)
            evaluated.eval()
            forward = (_torch_tape(copy.deepcopy(net).eval(), x_t, y_t, criterion, False),
                       _flax_tape(evaluated, x_f, y_f, flax_loss, False))
            found = _localise("forward", *forward, name_map, flatten, rtol)
    if found is not None and found.between and found.torch_type == "Linear":     # a forgotten flatten order?
        flat = port.record_flattens(copy.deepcopy(net).eval(), x_t).get(found.torch_path)
        seen = flat and _compare(forward[1].inputs[found.flax_path], forward[0].inputs[found.torch_path], flat)
        if seen and seen[1] is None and seen[0] <= rtol:
            found = replace(found, hint=f"its input is flattened channels-last: convert with "
                                        f"flatten={{{found.torch_path!r}: {flat}}} (or flatten='auto')")
    top = port.rename("", name_map)
    output = _compare(f.outputs[top], t.outputs[""]) if "" in t.outputs and top in f.outputs else (0.0, None)
    backward = None
    if output[1] is None and output[0] <= rtol:        # the output agrees: so does the loss's gradient
        backward = _localise("backward", t, f, name_map, flatten, rtol)
    return [d for d in (found, backward) if d is not None]
