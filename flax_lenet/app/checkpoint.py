"""Save and load the Net's weights in three formats, chosen by the file name, never half-written.

    file name              format                                     layout
    *.pt, *.pth            torch.save(state_dict), read with           torch  (conv1.weight [O, I, kH, kW])
                           torch.load(weights_only=True) only
    *.safetensors          safetensors (no code, no pickle)            torch
    anything else          an Orbax checkpoint directory               Flax   (conv1/kernel [kH, kW, I, O])

Every load checks the keys and shapes against the Net (``flax_lenet.convert``) and says what
was expected and what was found: ``BadWeights`` for weights that do not fit the Net, ``BadFile``
for a file that is missing, damaged, unreadable or unwritable (both ``flax_lenet.errors`` kinds).
Every save writes to a temporary name in the same folder and renames it into place, so a crash
or a bad input never leaves a half-written file behind, and an existing file is replaced only
with ``overwrite=True``.
"""

import pickle
import re
import sys
from pathlib import Path

import numpy as np

from flax_lenet import convert
from flax_lenet.app.files import atomic_write, os_reason
from flax_lenet.errors import BadFile, BadWeights

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"


def checkpoint_format(path) -> str:
    """``'torch'`` for ``.pt``/``.pth``, ``'safetensors'`` for ``.safetensors``, else ``'orbax'``."""
    suffix = Path(path).suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix == SAFETENSORS_SUFFIX:
        return "safetensors"
    return "orbax"


def _describe(fmt: str) -> str:
    return {"torch": "a torch state_dict (.pt/.pth)", "safetensors": "a .safetensors file",
            "orbax": "an Orbax checkpoint directory"}[fmt]


MAX_REASON = 240   # characters of a library's own message kept in ours (tensorstore adds a JSON spec)


def _first_line(e: BaseException) -> str:
    """``'TypeName: first sentence of the message'``, to keep an error on one line."""
    text = str(e).strip().splitlines()
    if not text:
        return type(e).__name__
    reason = text[0].split(". ")[0].split(" [tensorstore_spec=")[0]
    return f"{type(e).__name__}: {reason[:MAX_REASON]}{'...' if len(reason) > MAX_REASON else ''}"


def _weights_only_reason(e: BaseException) -> str:
    """The line of torch's long ``weights_only`` message that says what was wrong."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines[1:] if not ln.startswith(("Please file", "Check the documentation"))]
    return useful[0] if useful else _first_line(e)


# --- loading ----------------------------------------------------------------------------------

def _unreadable(path: Path, e: OSError) -> BadFile:
    """``BadFile`` for a checkpoint the OS would not let us read (permissions, a folder, ...)."""
    return BadFile(f"{path}: expected {_describe(checkpoint_format(path))} that can be read, "
                   f"found one that cannot be read ({os_reason(e)})")


def _load_torch_pickle(path: Path) -> dict:
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(e))
        if found is None:           # not a forbidden object: a damaged pickle stream
            raise BadFile(f"{path}: expected {_describe('torch')}, found a truncated or corrupt file "
                          f"({_weights_only_reason(e)})") from None
        raise BadFile(f"{path}: refused: expected a state_dict of tensors, found a pickle with a "
                      f"reference to {found.group(1)}; nothing in it was run "
                      "(torch.load weights_only=True)") from None
    except OSError as e:
        raise _unreadable(path, e) from None
    except Exception as e:          # torch's zip and pickle readers fail in many ways on a damaged file
        raise BadFile(f"{path}: expected {_describe('torch')}, found a truncated or corrupt file "
                      f"({_first_line(e)})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = type(obj).__name__ if not isinstance(obj, dict) else "a dict with non-tensor values"
        raise BadWeights(f"{path}: expected a state_dict {{name: tensor}}, found {found}")
    return convert.clean_state(obj)            # numpy (bfloat16 kept); DataParallel/compile prefixes stripped


def _load_safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except OSError as e:
        raise _unreadable(path, e) from None
    except Exception as e:          # safetensors reports a damaged header in its own error types
        raise BadFile(f"{path}: expected {_describe('safetensors')}, found a truncated or corrupt file "
                      f"({_first_line(e)})") from None


def _ignore_closed_loop_callbacks() -> None:
    """Silence the late ``RuntimeError('Event loop is closed')`` of a failed Orbax read, only that.

    When tensorstore fails to read damaged array data, Orbax closes its asyncio loop while
    tensorstore still has callbacks queued; they raise in a background thread, and Python
    prints each as "Exception ignored in: ..." with a traceback, after our one-line error.
    This wraps ``sys.unraisablehook`` once so that exactly that error is dropped and every
    other unraisable exception still goes to the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._drops_closed_loop = True
    sys.unraisablehook = hook


def _read_ocdbt_store(path: Path) -> None:
    """Read every entry of the checkpoint's OCDBT key-value store, synchronously, in this thread.

    Damage to the store (a bad manifest, a truncated data file) then raises here, once. Found
    inside Orbax's restore instead, it also reaches tensorstore callbacks queued on Orbax's
    asyncio loop after that loop has closed, and those print "Event loop is closed" tracebacks
    beside the one-line error. A checkpoint written without OCDBT has no manifest: nothing to do.
    """
    if not (path / "manifest.ocdbt").is_file():
        return
    import tensorstore as ts
    store = ts.KvStore.open({"driver": "ocdbt", "base": path.absolute().as_uri()}).result()
    for key in store.list().result():
        store.read(key).result()


def _load_orbax(path: Path) -> dict:
    import orbax.checkpoint as ocp
    if not path.is_dir():
        raise BadFile(f"{path}: expected {_describe('orbax')} (or a .pt/.pth/.safetensors file name), "
                      "found a file")
    try:
        _read_ocdbt_store(path)
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(path.absolute())
    except Exception as e:          # Orbax and tensorstore fail in many ways on a damaged checkpoint
        _ignore_closed_loop_callbacks()
        raise BadFile(f"{path}: expected {_describe('orbax')}, found one that cannot be read "
                      f"({_first_line(e)})") from None
    if not isinstance(tree, dict):
        raise BadWeights(f"{path}: expected a Flax parameter tree, found {type(tree).__name__}")
    try:
        return convert.flax_to_torch(tree)
    except BadWeights as e:
        raise BadWeights(f"{path}: {e}") from None


def load_state(path, *, kernel_size: int | None = None) -> dict[str, np.ndarray]:
    """Load a checkpoint in any of the three formats as a torch-layout ``state_dict`` of numpy arrays.

    Args:
      path: ``*.pt``/``*.pth``, ``*.safetensors``, or an Orbax checkpoint directory.
      kernel_size: if given, the checkpoint must be for ``Net(kernel_size)``.

    Returns:
      ``{'conv1.weight': [O, I, kH, kW], ..., 'fc3.bias': [10]}``, checked against the Net.

    Raises:
      BadFile: no such checkpoint, an unreadable, corrupt or truncated file, or a pickle that
      carries code. BadWeights: missing or extra keys, wrong shapes, the other kernel size, or
      NaN/Inf weights.
    """
    path = Path(path)
    fmt = checkpoint_format(path)
    if not path.exists():
        raise BadFile(f"{path}: expected {_describe(fmt)}, found no such "
                      f"{'directory' if fmt == 'orbax' else 'file'}")
    state = {"torch": _load_torch_pickle, "safetensors": _load_safetensors, "orbax": _load_orbax}[fmt](path)
    try:
        params = convert.torch_to_flax(state)               # checks keys and shapes
    except BadWeights as e:
        raise BadWeights(f"{path}: {e}") from None
    found = convert.kernel_size_of(params)
    if kernel_size is not None and found != kernel_size:
        raise BadWeights(f"{path}: expected a checkpoint for kernel size {kernel_size}, "
                         f"found one for kernel size {found}")
    for key, value in state.items():
        if not np.all(np.isfinite(value)):
            raise BadWeights(f"{path}: expected finite weights, found NaN or Inf in {key}")
    return state


def load_flax_params(path, *, kernel_size: int | None = None) -> dict:
    """``load_state`` converted to the Flax tree ``{'conv1': {'kernel', 'bias'}, ...}``."""
    return convert.torch_to_flax(load_state(path, kernel_size=kernel_size))


# --- saving -----------------------------------------------------------------------------------

def save(path, state: dict[str, np.ndarray], *, overwrite: bool = False) -> None:
    """Save a torch-layout ``state_dict`` in the format ``path``'s name asks for, atomically.

    Args:
      path: ``*.pt``/``*.pth`` (``torch.save``), ``*.safetensors``, or an Orbax directory
        (written in the Flax layout through ``flax_lenet.convert``).
      state: ``{'conv1.weight': ..., ...}`` numpy arrays or torch tensors.
      overwrite: replace an existing ``path``.
    """
    state = {k: np.ascontiguousarray(np.asarray(v.detach().cpu() if hasattr(v, "detach") else v))
             for k, v in state.items()}
    params = convert.torch_to_flax(state)                   # checks keys and shapes first
    fmt = checkpoint_format(path)
    if fmt == "torch":
        import torch

        def write(tmp):
            torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp)
    elif fmt == "safetensors":
        from safetensors.numpy import save_file

        def write(tmp):
            save_file(state, tmp)
    else:
        import orbax.checkpoint as ocp

        def write(tmp):
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(tmp.absolute(), params)
                ckptr.wait_until_finished()
    atomic_write(path, write, overwrite=overwrite)


def convert_checkpoint(src, dst, *, overwrite: bool = False, kernel_size: int | None = None) -> dict:
    """Read ``src`` and write ``dst``, each in the format its name says; returns the state written."""
    state = load_state(src, kernel_size=kernel_size)
    save(dst, state, overwrite=overwrite)
    return state
