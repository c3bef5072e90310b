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
with ``overwrite=True``, and only when it is a checkpoint of the format its name asks for
(``replaceable``): ``overwrite`` never deletes a folder of photos named ``x.orbax``.

Every checkpoint written here carries a SHA-256, and loading verifies it: a flipped byte is a
one-line ``BadFile``, never weights that quietly changed.

    *.safetensors      SHA-256 of the tensors (``tensor_digest``) in the metadata, key ``flax_lenet.sha256``
    Orbax directory    a sidecar file ``flax_lenet.sha256``: the SHA-256 of every file in it, in the
                       format of ``sha256sum`` (``sha256sum -c flax_lenet.sha256`` checks it too)
    *.pt, *.pth        the zip's CRC-32s, and the SHA-256 of the file before it in the zip comment

A checkpoint from another tool has none of these; it loads as before, and ``load_state`` adds a
note that it could not be verified (or, for a zip ``.pt``, that only its CRC-32s were checked).

A failed Orbax read or write (a damaged checkpoint, a full disk) is one ``BadFile`` here; what
Orbax's and tensorstore's threads print beside it (absl logs, asyncio reports, "Event loop is
closed") is left to the process: the ``flax-lenet`` command drops exactly those
(``cli.quiet_reported_failures``); nothing in this module changes a process-wide hook or logger.

Any other model's weights (``flax-lenet convert --torch/--flax``) are read by ``read_torch_state``
(the same safe reading, no Net check) and written by ``save_flax_tree`` (Flax layout, Orbax or
safetensors, through the same writer and with the same SHA-256).

Before reading, ``load_state`` puts back an Orbax folder (or the run folder above a checkpoint)
that a writer killed in the middle of a folder swap left moved aside (``files.put_back``).
"""

import hashlib
import io
import json
import os
import pickle
import re
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np

from flax_lenet import convert
from flax_lenet.app.files import atomic_write, kind, no_interrupt, os_error, os_reason, put_back
from flax_lenet.errors import BadFile, BadWeights

DIGEST_KEY = "flax_lenet.sha256"        # safetensors metadata key
SIDECAR = "flax_lenet.sha256"           # file in an Orbax checkpoint directory
PT_TAG = b"flax-lenet sha256 "          # start of the zip comment of a .pt written here
_PT_COMMENT = len(PT_TAG) + 64
_EOCD = b"PK\x05\x06"                   # a zip's end-of-central-directory record, 22 bytes + comment

#: a checkpoint of more is refused before any of it is read: the Net's weights take 0.3 MiB in
#: float32 (0.7 MiB in float64), and reading a file takes memory of its size
MAX_CHECKPOINT_BYTES = 256 << 20

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


# --- checksums --------------------------------------------------------------------------------

def tensor_digest(state: dict) -> str:
    """SHA-256 over every tensor of a state_dict: name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(state):
        v = np.ascontiguousarray(state[key])
        h.update(f"{key}\0{v.dtype.name}\0{v.shape}\0".encode())
        h.update(v.tobytes())
    return h.hexdigest()


def _changed(path: Path, what: str) -> BadFile:
    return BadFile(f"{path}: expected {what} to match the SHA-256 flax-lenet wrote with it, found a different "
                   "one: the checkpoint was changed or damaged after it was written")


def _not_verified(path: Path, how: str = "") -> str:
    return (f"{path} was not written by flax-lenet: it carries no SHA-256 of its weights, so they "
            f"could not be verified{how}; loaded as it is")


def _tag_zip(data: bytes) -> bytes:
    """``torch.save``'s zip with the SHA-256 of everything before it as the zip comment."""
    if data[-22:-18] != _EOCD or data[-2:] != b"\0\0":     # not a zip ending in an empty comment
        raise RuntimeError("torch.save wrote a file that does not end in a zip end record")
    body = data[:-2] + struct.pack("<H", _PT_COMMENT)
    return body + PT_TAG + hashlib.sha256(body).hexdigest().encode()


def _verify_pt(path: Path, data: bytes, notes: list | None) -> None:
    """The SHA-256 in the zip comment of a .pt written here; a zip from elsewhere: its CRC-32s."""
    n = _PT_COMMENT
    ours = PT_TAG in data[-(n + 64):] or (data[-(n + 22):-(n + 18)] == _EOCD
                                          and data[-(n + 2):-n] == struct.pack("<H", n))
    if ours:                    # any byte of it changed, the comment's length and tag included, fails here
        body, tag = data[:-n], data[-n:]
        if not (tag.startswith(PT_TAG) and body[-22:-18] == _EOCD and body[-2:] == struct.pack("<H", n)
                and tag[len(PT_TAG):] == hashlib.sha256(body).hexdigest().encode()):
            raise _changed(path, "its content")
        return
    if not data.startswith(b"PK\x03\x04"):
        if notes is not None:
            notes.append(_not_verified(path))
        return
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            bad = z.testzip()
    except Exception as e:          # zipfile fails in many ways on a damaged archive
        raise BadFile(f"{path}: expected {_describe('torch')}, found a truncated or corrupt file "
                      f"({_first_line(e)})") from None
    if bad is not None:
        raise BadFile(f"{path}: expected every entry of the zip to match its CRC-32, found {bad} does "
                      "not: the file was changed or damaged")
    if notes is not None:
        notes.append(_not_verified(path, " (its zip's CRC-32s matched)"))


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_sidecar(folder: Path) -> None:
    """``flax_lenet.sha256`` in an Orbax checkpoint: every file's SHA-256, as ``sha256sum`` prints it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SIDECAR)
    (folder / SIDECAR).write_text("".join(f"{_sha256_file(p)}  {p.relative_to(folder).as_posix()}\n"
                                          for p in files), encoding="utf-8")


_SIDECAR_LINE = re.compile(r"([0-9a-f]{64})  ([^\n]+)")


def _verify_orbax(path: Path, notes: list | None) -> None:
    side = path / SIDECAR
    if not os.path.lexists(side):
        if notes is not None:
            notes.append(_not_verified(path))
        return
    if side.is_dir():
        raise BadFile(f"{path}: expected {SIDECAR} to be a regular file, found a folder: the checkpoint "
                      "was changed or damaged after it was written")
    try:
        text = side.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = None
    except OSError as e:
        raise _unreadable(path, e) from None
    lines = text.splitlines() if text is not None else []
    entries = [_SIDECAR_LINE.fullmatch(line) for line in lines]
    if not lines or not all(entries) or not text.endswith("\n"):
        raise _changed(path, SIDECAR)
    for m in entries:
        name = m.group(2)
        p = path / name
        if ".." in Path(name).parts or Path(name).is_absolute() or not p.is_file():
            raise BadFile(f"{path}: expected {name} (listed in {SIDECAR}), found no such file: the checkpoint "
                          "was changed or damaged after it was written")
        try:
            digest = _sha256_file(p)
        except OSError as e:
            raise _unreadable(path, e) from None
        if digest != m.group(1):
            raise _changed(path, name)


def _too_big(path: Path, size: int) -> BadFile:
    return BadFile(f"{path}: expected {_describe(checkpoint_format(path))} of at most "
                   f"{MAX_CHECKPOINT_BYTES >> 20} MiB, found {size / (1 << 20):,.0f} MiB; nothing was read")


def _regular_file(path: Path) -> None:
    """Refuse a FIFO, socket or device (reading one can block forever), and a file over
    ``MAX_CHECKPOINT_BYTES``, before reading any of it; a folder fails on reading."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise _unreadable(path, e) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise BadFile(f"{path}: expected {_describe(checkpoint_format(path))}, a regular file, "
                      f"found a {kind(st.st_mode)}")
    if stat.S_ISREG(st.st_mode) and st.st_size > MAX_CHECKPOINT_BYTES:
        raise _too_big(path, st.st_size)


def _regular_folder(path: Path) -> None:
    """An Orbax checkpoint before Orbax or tensorstore opens it: every entry a folder or a regular
    file (a FIFO there would block a reader forever; a link could lead anywhere), and all of them
    together at most ``MAX_CHECKPOINT_BYTES``."""
    total = 0
    for folder, dirs, names in os.walk(path):
        for name in dirs + names:
            p = Path(folder) / name
            try:
                st = os.lstat(p)
            except OSError as e:
                raise _unreadable(path, e) from None
            if stat.S_ISDIR(st.st_mode):
                continue
            if stat.S_ISLNK(st.st_mode):
                raise BadFile(f"{path}: expected {_describe('orbax')} of folders and regular files, found "
                              f"{p.relative_to(path)} a symbolic link")
            if not stat.S_ISREG(st.st_mode):
                raise BadFile(f"{path}: expected {_describe('orbax')} of folders and regular files, found "
                              f"{p.relative_to(path)} a {kind(st.st_mode)}")
            total += st.st_size
            if total > MAX_CHECKPOINT_BYTES:
                raise _too_big(path, total)


# --- loading ----------------------------------------------------------------------------------

def _unreadable(path: Path, e: OSError) -> BadFile:
    """``BadFile`` for a checkpoint the OS would not let us read (permissions, a folder, ...)."""
    return BadFile(f"{path}: expected {_describe(checkpoint_format(path))} that can be read, "
                   f"found one that cannot be read ({os_reason(e)})")


def _load_torch_pickle(path: Path, notes: list | None = None) -> dict:
    import torch
    _regular_file(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _unreadable(path, e) from None
    _verify_pt(path, data, notes)
    try:
        with warnings.catch_warnings():         # torch warns about a TorchScript archive, then refuses it
            warnings.simplefilter("ignore", UserWarning)
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
        if "TorchScript" in str(e):
            raise BadFile(f"{path}: expected {_describe('torch')} saved with torch.save(net.state_dict()), "
                          "found a TorchScript archive (torch.jit.save); load it with torch.jit.load and "
                          "save its state_dict()") from None
        raise BadFile(f"{path}: expected {_describe('torch')}, found a truncated or corrupt file "
                      f"({_first_line(e)})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = type(obj).__name__ if not isinstance(obj, dict) else "a dict with non-tensor values"
        raise BadWeights(f"{path}: expected a state_dict {{name: tensor}}, found {found}")
    try:
        return convert.clean_state(obj)        # numpy (bfloat16 kept); DataParallel/compile prefixes stripped
    except BadWeights as e:                    # a key that is not a string
        raise BadWeights(f"{path}: {e}") from None


def _load_safetensors(path: Path, notes: list | None = None) -> dict:
    from safetensors.numpy import load_file
    _regular_file(path)
    try:
        with open(path, "rb") as f:             # an 8-byte length, then the JSON header
            size = struct.unpack("<Q", f.read(8))[0]
            if size > MAX_CHECKPOINT_BYTES:
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError(f"a header that is a JSON {type(header).__name__}, not an object")
        if any(isinstance(v, dict) and v.get("dtype") == "BF16" for v in header.values()):
            from safetensors.torch import load_file as load_torch_file
            state = convert.clean_state(load_torch_file(path))   # numpy has no bfloat16: ml_dtypes'
        else:
            state = load_file(path)
    except OSError as e:
        raise _unreadable(path, e) from None
    except Exception as e:          # safetensors reports a damaged header in its own error types
        raise BadFile(f"{path}: expected {_describe('safetensors')}, found a truncated or corrupt file "
                      f"({_first_line(e)})") from None
    metadata = header.get("__metadata__") or {}
    expected = metadata.get(DIGEST_KEY)
    if expected is None and any(re.fullmatch("[0-9a-f]{64}", str(v)) for v in metadata.values()):
        raise _changed(path, f"the metadata key {DIGEST_KEY}")     # a digest under a damaged key
    if expected is None:
        if notes is not None:
            notes.append(_not_verified(path))
    elif tensor_digest(state) != expected:
        raise _changed(path, "its tensors")
    return state


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


def _load_orbax(path: Path, notes: list | None = None) -> dict:
    import orbax.checkpoint as ocp
    if not path.is_dir():
        raise BadFile(f"{path}: expected {_describe('orbax')} (or a .pt/.pth/.safetensors file name), "
                      "found a file")
    _regular_folder(path)
    _verify_orbax(path, notes)
    try:
        _read_ocdbt_store(path)
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(path.absolute())
    except Exception as e:          # Orbax and tensorstore fail in many ways on a damaged checkpoint
        raise BadFile(f"{path}: expected {_describe('orbax')}, found one that cannot be read "
                      f"({_first_line(e)})") from None
    if not isinstance(tree, dict):
        raise BadWeights(f"{path}: expected a Flax parameter tree, found {type(tree).__name__}")
    try:
        return convert.flax_to_torch(tree)
    except BadWeights as e:
        raise BadWeights(f"{path}: {e}") from None


class NotTheNet(BadWeights):
    """A checkpoint of some other model than the tutorial's Net (it has no ``conv1.weight``)."""


def read_torch_state(path, *, notes: list | None = None) -> dict[str, np.ndarray]:
    """Any model's torch ``state_dict`` from a ``.pt``/``.pth`` or ``.safetensors`` file, as numpy
    arrays: the same safe reading as ``load_state`` (``torch.load(weights_only=True)``, the size cap,
    the SHA-256 check, ``notes`` for another tool's file), without checking it against the Net.

    Raises:
      BadFile: no such file, an Orbax directory name, or anything ``load_state`` refuses as a file.
    """
    path = Path(path)
    fmt = checkpoint_format(path)
    if fmt == "orbax":
        raise BadFile(f"{path}: expected a torch state_dict (.pt/.pth or .safetensors), found a name that "
                      "means an Orbax directory (Flax layout)")
    if not path.exists():
        raise BadFile(f"{path}: expected {_describe(fmt)}, found no such file")
    return {"torch": _load_torch_pickle, "safetensors": _load_safetensors}[fmt](path, notes)


def load_state(path, *, kernel_size: int | None = None, notes: list | None = None) -> dict[str, np.ndarray]:
    """Load a checkpoint in any of the three formats as a torch-layout ``state_dict`` of numpy arrays.

    Args:
      path: ``*.pt``/``*.pth``, ``*.safetensors``, or an Orbax checkpoint directory.
      kernel_size: if given, the checkpoint must be for ``Net(kernel_size)``.
      notes: if given, a line is appended for a checkpoint that carries no SHA-256 (another tool's).

    Returns:
      ``{'conv1.weight': [O, I, kH, kW], ..., 'fc3.bias': [10]}``, checked against the Net.

    Raises:
      BadFile: no such checkpoint, an unreadable, corrupt or truncated file, one whose SHA-256 (or
      CRC-32) does not match, or a pickle that carries code. BadWeights: missing or extra keys,
      wrong shapes, the other kernel size, or NaN/Inf weights.
    """
    path = Path(path)
    fmt = checkpoint_format(path)
    put_back(path)              # a folder swap cut by a kill between its two renames: the old folder back
    if not path.exists():
        raise BadFile(f"{path}: expected {_describe(fmt)}, found no such "
                      f"{'directory' if fmt == 'orbax' else 'file'}")
    state = {"torch": _load_torch_pickle, "safetensors": _load_safetensors, "orbax": _load_orbax}[fmt](path, notes)
    if "conv1.weight" not in state:         # another model's weights: one line, not a list of all their keys
        raise NotTheNet(f"{path}: expected the tutorial Net's state_dict (conv1.weight ... fc3.bias), found "
                        f"{len(state)} tensors and no conv1.weight (the first: {next(iter(state))!r})")
    try:
        params = convert.torch_to_flax(state)               # checks keys and shapes
    except BadWeights as e:
        raise BadWeights(f"{path}: {e}") from None
    found = convert.kernel_size_of(params)
    if kernel_size is not None and found != kernel_size:
        raise BadWeights(f"{path}: expected a checkpoint for kernel size {kernel_size}, "
                         f"found one for kernel size {found}")
    bad = _nonfinite_key(state)
    if bad is not None:
        raise BadWeights(f"{path}: expected finite weights, found NaN or Inf in {bad}")
    return state


def _nonfinite_key(state: dict) -> str | None:
    """The first key whose tensor holds NaN or Inf (``load_state`` refuses them, so ``save`` never writes them)."""
    return next((key for key, value in state.items() if not np.all(np.isfinite(value))), None)


def load_flax_params(path, *, kernel_size: int | None = None) -> dict:
    """``load_state`` converted to the Flax tree ``{'conv1': {'kernel', 'bias'}, ...}``."""
    return convert.torch_to_flax(load_state(path, kernel_size=kernel_size))


# --- saving -----------------------------------------------------------------------------------

def replaceable(path) -> str | None:
    """Why the existing ``path`` must not be replaced by a checkpoint, or None if it may be.

    Only a checkpoint of the format the name asks for may be: an Orbax directory (it holds
    Orbax's ``_METADATA`` or ``_CHECKPOINT_METADATA``), a safetensors file (an 8-byte header
    length, then JSON), a ``.pt`` (a zip or a pickle); or an empty file or folder, which holds
    nothing to lose. Anything else -- a folder of photos named ``x.orbax``, a folder named
    ``x.safetensors``, a text file named ``x.pt``, a symbolic link -- is refused.
    """
    path = Path(path)
    fmt = checkpoint_format(path)
    refuse = f"{path}: expected {_describe(fmt)} to replace, found "
    tail = "; only a checkpoint is ever replaced"
    if path.is_symlink():
        return refuse + "a symbolic link" + tail
    try:
        if path.is_dir():
            names = sorted(os.listdir(path))
            if fmt == "orbax" and ({"_METADATA", "_CHECKPOINT_METADATA"} & set(names) or not names):
                return None
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            return refuse + (f"a directory of other files ({shown})" if names else "a directory") + tail
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            return refuse + "a special file" + tail
        with open(path, "rb") as f:
            head = f.read(9)
        size = os.path.getsize(path)
    except OSError as e:
        return refuse + f"something that cannot be read ({os_reason(e)})" + tail
    if size == 0:
        return None
    if fmt == "safetensors" and len(head) == 9 and struct.unpack("<Q", head[:8])[0] < size and head[8:] == b"{":
        return None
    if fmt == "torch" and (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        return None
    kind = "a file that is not one" if fmt != "orbax" else "a file"
    return refuse + f"{kind} (it starts with {head[:8]!r})" + tail


def _write_orbax(target: Path, params: dict) -> None:
    import orbax.checkpoint as ocp
    try:
        with no_interrupt(), ocp.StandardCheckpointer() as ckptr:
            ckptr.save(target.absolute(), params)     # Ctrl-C: handled once Orbax's threads are done
            ckptr.wait_until_finished()
    except ValueError as e:         # tensorstore's write errors carry the OS error's number
        code = re.search(r"os_error_code='(\d+)'", str(e))
        if code is None:
            raise
        raise os_error(int(code.group(1))) from None
    _write_sidecar(target)


def _to_torch(array):
    """A torch tensor of ``array``'s values; bfloat16 (``ml_dtypes``, which torch.from_numpy refuses)
    travels as its 16-bit pattern and is viewed back as ``torch.bfloat16``, bit for bit."""
    import ml_dtypes
    import torch
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _as_numpy(state: dict) -> dict:
    return {k: np.ascontiguousarray(np.asarray(v.detach().cpu() if hasattr(v, "detach") else v))
            for k, v in state.items()}


def write_new(target, state: dict, fmt: str | None = None) -> None:
    """Write a checkpoint, with its SHA-256, straight to ``target``, a new path in a private folder.

    ``save`` calls it on a temporary beside the final path; ``runs.write_run`` inside the
    temporary run directory. ``fmt``: the format (default: from ``target``'s name).
    """
    target = Path(target)
    state = _as_numpy(state)
    params = convert.torch_to_flax(state)                   # checks keys and shapes first
    fmt = fmt or checkpoint_format(target)
    if fmt == "torch":
        import torch
        buf = io.BytesIO()
        torch.save({k: _to_torch(v) for k, v in state.items()}, buf)
        target.write_bytes(_tag_zip(buf.getvalue()))        # written here: a full disk is an OSError
    elif fmt == "safetensors":
        _write_safetensors(target, state)
    else:
        _write_orbax(target, params)


def _write_safetensors(target: Path, flat: dict) -> None:
    from safetensors.numpy import save as save_bytes
    target.write_bytes(save_bytes(flat, metadata={DIGEST_KEY: tensor_digest(flat)}))


def save(path, state: dict[str, np.ndarray], *, overwrite: bool = False, notes: list | None = None) -> None:
    """Save a torch-layout ``state_dict`` in the format ``path``'s name asks for, atomically.

    Args:
      path: ``*.pt``/``*.pth`` (``torch.save``), ``*.safetensors``, or an Orbax directory
        (written in the Flax layout through ``flax_lenet.convert``).
      state: ``{'conv1.weight': ..., ...}`` numpy arrays or torch tensors.
      overwrite: replace an existing ``path`` -- only a checkpoint of the same format (``replaceable``).
      notes: if given, a line is appended for an old checkpoint that could not be removed (``atomic_write``).

    Raises:
      BadWeights: ``state`` does not fit the Net, or holds NaN or Inf. BadFile: ``path`` exists (and may not be
      replaced), another process is writing it, or the OS refused the write (a full disk).
    """
    state = _as_numpy(state)
    convert.torch_to_flax(state)                            # checks keys and shapes before any file
    bad = _nonfinite_key(state)
    if bad is not None:
        raise BadWeights(f"{path}: expected finite weights to save, found NaN or Inf in {bad}; nothing was written")
    fmt = checkpoint_format(path)
    atomic_write(path, lambda tmp: write_new(tmp, state, fmt), overwrite=overwrite, may_replace=replaceable,
                 notes=notes)


def check_flax_tree_name(path) -> str:
    """``'orbax'`` or ``'safetensors'`` for a path ``save_flax_tree`` may write; ``BadFile`` for a .pt/.pth name."""
    fmt = checkpoint_format(path)
    if fmt == "torch":
        raise BadFile(f"{path}: expected an Orbax directory or a .safetensors name for Flax variables, found a "
                      "torch file name (.pt/.pth)")
    return fmt


def save_flax_tree(path, tree: dict, *, overwrite: bool = False, notes: list | None = None) -> None:
    """Save any Flax model's variables, a nested dict of numpy arrays (``nnx.to_pure_dict`` of its
    state), atomically and with a SHA-256, as ``save`` saves the Net's.

    Args:
      path: an Orbax directory (the nested dict as it is, its keys made strings: Orbax's own
        restore gives it back; ``nnx.restore_int_paths`` turns ``'0'`` back into ``0``), or
        ``*.safetensors`` (one tensor per leaf, its path joined with ``.``:
        ``flax.traverse_util.unflatten_dict(load_file(path), sep='.')`` gives the tree back).
      tree: ``{'conv': {'kernel': array, 'bias': array}, ...}``.
      overwrite: replace an existing ``path`` -- only a checkpoint of the same format (``replaceable``).
      notes: as ``save``'s.

    Raises:
      BadWeights: NaN or Inf in ``tree``. BadFile: a ``.pt``/``.pth`` name (a torch layout, which
      this tree is not), or what ``save`` refuses.
    """
    from flax import traverse_util
    fmt = check_flax_tree_name(path)
    flat = {".".join(map(str, k)): np.ascontiguousarray(v) for k, v in traverse_util.flatten_dict(tree).items()}
    bad = _nonfinite_key(flat)
    if bad is not None:
        raise BadWeights(f"{path}: expected finite weights to save, found NaN or Inf in {bad}; nothing was written")
    strings = traverse_util.unflatten_dict({tuple(map(str, k)): v
                                            for k, v in traverse_util.flatten_dict(tree).items()})
    write = (lambda tmp: _write_safetensors(tmp, flat)) if fmt == "safetensors" else \
        (lambda tmp: _write_orbax(tmp, strings))
    atomic_write(path, write, overwrite=overwrite, may_replace=replaceable, notes=notes)


def convert_checkpoint(src, dst, *, overwrite: bool = False, kernel_size: int | None = None,
                       notes: list | None = None) -> dict:
    """Read ``src`` and write ``dst``, each in the format its name says; returns the state written.
    ``notes`` gets ``load_state``'s and ``save``'s."""
    state = load_state(src, kernel_size=kernel_size, notes=notes)
    save(dst, state, overwrite=overwrite, notes=notes)
    return state
