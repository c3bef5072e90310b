"""Every checkpoint the project writes carries a SHA-256; loading verifies it, one line on a mismatch.

    .safetensors    SHA-256 of the tensors in the metadata (``checkpoint.DIGEST_KEY``)
    Orbax folder    ``flax_lenet.sha256``: every file's SHA-256, in ``sha256sum``'s format
    .pt             the SHA-256 of the file in its zip comment (and the zip's own CRC-32s)

Checkpoints from other tools carry none: they load as before, with a note that they could not be
verified. Before, one flipped byte gave ``eval`` exit 0 with about 600 changed weights.
"""

import hashlib
import zipfile

import numpy as np
import pytest
import torch

from flax_lenet.app import checkpoint
from flax_lenet.errors import BadFile
from tests.helpers import run_cli, state_numpy, torch_net

FORMATS = ("w.pt", "w.safetensors", "w.orbax")


@pytest.fixture(scope="module")
def state():
    return state_numpy(torch_net(3, "float32", seed=0))


def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _offsets(size: int, rng, n: int = 60) -> list[int]:
    """The first and last 160 bytes (headers, zip records, the comment) and ``n`` bytes in between."""
    edges = list(range(min(160, size))) + list(range(max(0, size - 160), size))
    return sorted(set(edges) | set(rng.integers(0, size, n).tolist()))


@pytest.mark.parametrize("name", ["w.pt", "w.safetensors"])
def test_any_flipped_byte_of_a_checkpoint_file_the_project_wrote_is_refused(tmp_path, state, name):
    path = tmp_path / name
    checkpoint.save(path, state)
    good = path.read_bytes()
    for offset in _offsets(len(good), np.random.default_rng(0)):
        flip(path, offset)
        with pytest.raises(BadFile):
            checkpoint.load_state(path)
        path.write_bytes(good)
    checkpoint.load_state(path)                                     # and unchanged, it loads


def test_any_flipped_byte_of_an_orbax_checkpoint_the_project_wrote_is_refused(tmp_path, state):
    path = tmp_path / "w.orbax"
    checkpoint.save(path, state)
    rng = np.random.default_rng(1)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    assert len(files) >= 8 and (path / checkpoint.SIDECAR) in files
    for f in files:
        good = f.read_bytes()
        for offset in sorted({0, len(good) - 1, *rng.integers(0, len(good), 3).tolist()}):
            flip(f, offset)
            with pytest.raises(BadFile, match="changed or damaged"):
                checkpoint.load_state(path)
            f.write_bytes(good)
    checkpoint.load_state(path)


@pytest.mark.parametrize("name", FORMATS)
def test_a_flipped_byte_gives_exit_2_on_eval_and_convert(tmp_path, capsys, state, name):
    path = tmp_path / name
    checkpoint.save(path, state)
    data = max((p for p in [path, *path.rglob("*")] if p.is_file()), key=lambda p: p.stat().st_size)
    flip(data, data.stat().st_size // 2)                            # in the weights themselves
    for argv in (["eval", path], ["convert", path, tmp_path / "out.safetensors"]):
        rc, out, err = run_cli(capsys, *argv)
        assert rc == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert "the checkpoint was changed or damaged after it was written" in err, err
    assert not (tmp_path / "out.safetensors").exists()


def test_the_checksums_are_where_the_docs_say_and_other_tools_still_read_the_files(tmp_path, state):
    checkpoint.save(tmp_path / "w.safetensors", state)
    from safetensors import safe_open
    with safe_open(tmp_path / "w.safetensors", framework="np") as f:
        assert f.metadata() == {checkpoint.DIGEST_KEY: checkpoint.tensor_digest(state)}

    checkpoint.save(tmp_path / "w.pt", state)
    loaded = torch.load(tmp_path / "w.pt", weights_only=True)      # torch itself reads it as ever
    np.testing.assert_array_equal(loaded["fc1.weight"].numpy(), state["fc1.weight"])
    data = (tmp_path / "w.pt").read_bytes()
    with zipfile.ZipFile(tmp_path / "w.pt") as z:
        assert z.testzip() is None
        assert z.comment == checkpoint.PT_TAG + hashlib.sha256(data[:-len(z.comment)]).hexdigest().encode()

    checkpoint.save(tmp_path / "w.orbax", state)
    lines = (tmp_path / "w.orbax" / checkpoint.SIDECAR).read_text().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}        # sha256sum -c format
    on_disk = {p.relative_to(tmp_path / "w.orbax").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in (tmp_path / "w.orbax").rglob("*") if p.is_file() and p.name != checkpoint.SIDECAR}
    assert listed == on_disk


def test_the_tensor_digest_sees_names_dtypes_shapes_and_values(state):
    digest = checkpoint.tensor_digest(state)
    assert checkpoint.tensor_digest(dict(state)) == digest
    changed = dict(state, **{"fc3.bias": state["fc3.bias"].copy()})
    changed["fc3.bias"][0] = np.nextafter(changed["fc3.bias"][0], np.float32(1))
    assert checkpoint.tensor_digest(changed) != digest
    assert checkpoint.tensor_digest(dict(state, **{"fc3.bias": state["fc3.bias"].astype(np.float64)})) != digest
    assert checkpoint.tensor_digest(dict(state, **{"fc3.bias": state["fc3.bias"].reshape(2, 5)})) != digest
    renamed = {("fc4.bias" if k == "fc3.bias" else k): v for k, v in state.items()}
    assert checkpoint.tensor_digest(renamed) != digest


def _foreign(tmp_path, name, state):
    """The same weights written by the tools themselves, with no checksum of ours."""
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    elif name.endswith(".safetensors"):
        from safetensors.numpy import save_file
        save_file(state, path)
    else:
        import orbax.checkpoint as ocp

        from flax_lenet import convert
        with ocp.StandardCheckpointer() as ck:
            ck.save(path.absolute(), convert.torch_to_flax(state))
    return path


@pytest.mark.parametrize("name", FORMATS)
def test_a_checkpoint_from_another_tool_loads_with_a_note_that_it_could_not_be_verified(tmp_path, capsys, state,
                                                                                      name):
    path = _foreign(tmp_path, name, state)
    rc, out, err = run_cli(capsys, "eval", path, "--json")
    assert rc == 0, err
    assert err.startswith(f"flax-lenet eval: note: {path} was not written by flax-lenet: it carries no SHA-256")
    assert err.count("\n") == 1 and '"verified": false' in out
    if name.endswith(".pt"):
        assert "its zip's CRC-32s matched" in err
    rc, out, err = run_cli(capsys, "eval", _written_here(tmp_path, name, state), "--json")
    assert rc == 0 and err == "" and '"verified": true' in out


def _written_here(tmp_path, name, state):
    path = tmp_path / f"ours-{name}"
    checkpoint.save(path, state)
    return path


def test_a_flipped_byte_in_another_tools_checkpoint_is_caught_only_where_it_carries_a_check(tmp_path, state):
    """A torch zip has CRC-32s: refused. A plain safetensors file has nothing: it loads, changed,
    with the note -- which is what the SHA-256 of the project's own files is for."""
    pt = _foreign(tmp_path, "w.pt", state)
    with zipfile.ZipFile(pt) as z:
        info = next(i for i in z.infolist() if i.file_size > 100_000)      # fc1.weight's data
    flip(pt, info.header_offset + 200)
    with pytest.raises(BadFile, match="to match its CRC-32, found w/data/4 does not|truncated or corrupt"):
        checkpoint.load_state(pt)
    st = _foreign(tmp_path, "w.safetensors", state)
    flip(st, st.stat().st_size - 4)
    notes = []
    changed = checkpoint.load_state(st, notes=notes)
    assert len(notes) == 1 and any(not np.array_equal(changed[k], state[k]) for k in state)
