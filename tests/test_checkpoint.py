"""Checkpoints: three formats by file name, exact round trips, atomic writes, no pickle code run."""

import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file as load_safetensors_torch

from flax_lenet import convert
from flax_lenet.app import checkpoint, runs
from flax_lenet.errors import BadFile, BadWeights
from flax_lenet.porting.tolerances import FLOAT32_CPU
from tests.helpers import assert_close, state_numpy, torch_net

NAMES = ("w.pt", "w.pth", "w.safetensors", "w.orbax")


@pytest.fixture(scope="module")
def state():
    return state_numpy(torch_net(3, "float32", seed=0))


@pytest.mark.parametrize("name", NAMES)
def test_every_format_round_trips_bit_for_bit(tmp_path, state, name):
    checkpoint.save(tmp_path / name, state)
    got = checkpoint.load_state(tmp_path / name)
    assert sorted(got) == sorted(state)
    for k in state:
        assert got[k].dtype == state[k].dtype
        np.testing.assert_array_equal(got[k], state[k])


def test_orbax_checkpoint_holds_the_flax_layout(tmp_path, state):
    import orbax.checkpoint as ocp
    checkpoint.save(tmp_path / "w.orbax", state)
    with ocp.StandardCheckpointer() as ck:
        tree = ck.restore((tmp_path / "w.orbax").absolute())
    assert tree["conv1"]["kernel"].shape == (3, 3, 1, 6)                    # [kH, kW, I, O]
    np.testing.assert_array_equal(tree["fc1"]["kernel"], convert.torch_to_flax(state)["fc1"]["kernel"])


def test_safetensors_loads_into_torch_reference_net(tmp_path, state):
    from torch_reference import Net
    checkpoint.save(tmp_path / "w.safetensors", state)
    net = Net()
    net.load_state_dict(load_safetensors_torch(tmp_path / "w.safetensors"))  # strict: every key, no extra
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k])


@pytest.mark.parametrize("src", ["a.pt", "a.safetensors", "a.orbax"])
@pytest.mark.parametrize("dst", ["b.pt", "b.safetensors", "b.orbax"])
def test_convert_between_formats_keeps_every_weight(tmp_path, state, src, dst):
    checkpoint.save(tmp_path / src, state)
    checkpoint.convert_checkpoint(tmp_path / src, tmp_path / dst)
    got = checkpoint.load_state(tmp_path / dst)
    for k in state:
        np.testing.assert_array_equal(got[k], state[k])


def _flax_logits(params, x):
    return np.asarray(convert.to_nnx(params)(x))


def test_weights_converted_from_torch_give_torchs_logits_in_flax(tmp_path, state):
    from torch_reference import Net
    x = np.random.default_rng(0).standard_normal((8, 32, 32, 1)).astype(np.float32)
    checkpoint.save(tmp_path / "t.safetensors", state)
    checkpoint.convert_checkpoint(tmp_path / "t.safetensors", tmp_path / "f.orbax")
    net = Net()
    net.load_state_dict(load_safetensors_torch(tmp_path / "t.safetensors"))
    expected = net(torch.from_numpy(convert.nhwc_to_nchw(x))).detach().numpy()
    params = checkpoint.load_flax_params(tmp_path / "f.orbax")
    assert_close(_flax_logits(params, x), expected, FLOAT32_CPU, "logits")
    # a conversion that forgot fc1's flatten order fails the same check
    params["fc1"]["kernel"] = np.ascontiguousarray(state["fc1.weight"].T)
    with pytest.raises(AssertionError):
        assert_close(_flax_logits(params, x), expected, FLOAT32_CPU, "logits")


class _RunsCode:
    """A pickle payload that creates a folder when unpickled: the shape of a malicious .pt."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pt_file_that_carries_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(BadFile, match=r"refused: .* found a pickle with a reference to \S*mkdir; nothing in it was run"):
        checkpoint.load_state(tmp_path / "evil.pt")
    assert not marker.exists()
    # the file really does carry code: an unrestricted unpickler runs it
    import zipfile
    with zipfile.ZipFile(tmp_path / "evil.pt") as z:
        payload = next(n for n in z.namelist() if n.endswith("data.pkl"))
        pickle.loads(z.read(payload))
    assert marker.exists()


def test_a_whole_pickled_module_is_refused(tmp_path):
    from torch_reference import Net
    torch.save(Net(), tmp_path / "model.pt")
    with pytest.raises(BadFile, match="refused"):
        checkpoint.load_state(tmp_path / "model.pt")


def test_save_refuses_to_overwrite_unless_asked(tmp_path, state):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(BadFile, match=r"found an existing file \(overwrite=True replaces it\)"):
        checkpoint.save(path, state)
    assert path.read_bytes() == b"keep me"
    with pytest.raises(BadFile, match=r"expected a \.safetensors file to replace, found a file that is not one"):
        checkpoint.save(path, state, overwrite=True)                # overwrite replaces only a checkpoint
    assert path.read_bytes() == b"keep me"
    path.unlink()
    checkpoint.save(path, {k: v + 1 for k, v in state.items()})
    checkpoint.save(path, state, overwrite=True)
    np.testing.assert_array_equal(checkpoint.load_state(path)["fc3.bias"], state["fc3.bias"])


@pytest.mark.parametrize("name", ["w.safetensors", "w.orbax"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, state, name):
    path = tmp_path / name
    checkpoint.save(path, state)
    before = sorted(p.name for p in tmp_path.rglob("*"))

    def half_then_crash(tmp):
        tmp.write_bytes(b"half") if not name.endswith("orbax") else tmp.mkdir()
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.atomic_write(path, half_then_crash, overwrite=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    np.testing.assert_array_equal(checkpoint.load_state(path)["fc3.bias"], state["fc3.bias"])


def test_overwriting_an_orbax_directory_replaces_it(tmp_path, state):
    checkpoint.save(tmp_path / "w.orbax", state)
    other = {k: v + 1 for k, v in state.items()}
    checkpoint.save(tmp_path / "w.orbax", other, overwrite=True)
    np.testing.assert_array_equal(checkpoint.load_state(tmp_path / "w.orbax")["fc3.bias"], other["fc3.bias"])
    assert [p.name for p in tmp_path.iterdir()] == ["w.orbax"]


def test_float64_weights_keep_their_dtype(tmp_path):
    state = state_numpy(torch_net(5, "float64", seed=1))
    checkpoint.save(tmp_path / "w.safetensors", state)
    got = checkpoint.load_state(tmp_path / "w.safetensors", kernel_size=5)
    assert got["conv1.weight"].dtype == np.float64 and got["conv1.weight"].shape == (6, 1, 5, 5)


def test_the_os_refusing_a_write_is_one_line_bad_file_and_keeps_the_old_file(tmp_path, state):
    path = tmp_path / "w.safetensors"
    checkpoint.save(path, state)
    before = path.read_bytes()

    def disk_full(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(BadFile, match=r"w\.safetensors: expected a writable folder .* found OSError: "
                                      "No space left on device") as e:
        checkpoint.atomic_write(path, disk_full, overwrite=True)
    assert "\n" not in str(e.value) and e.value.__cause__ is None and e.value.__suppress_context__
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


@pytest.mark.parametrize("name", ["w.pt", "w.safetensors"])
def test_a_checkpoint_the_os_will_not_read_is_bad_file(tmp_path, name):
    (tmp_path / name).mkdir()                                   # a folder where a file is expected
    with pytest.raises(BadFile, match=r"found one that cannot be read \((IsADirectory|OS)Error: "):
        checkpoint.load_state(tmp_path / name)


def test_weights_that_do_not_fit_the_net_are_bad_weights_named_by_path(tmp_path, state):
    partial = {k: v for k, v in state.items() if k != "fc3.bias"}
    from safetensors.numpy import save_file
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(BadWeights, match=r"partial\.safetensors: .*missing key 'fc3.bias'"):
        checkpoint.load_state(tmp_path / "partial.safetensors")
    with pytest.raises(BadWeights, match="expected a checkpoint for kernel size 5, found one for kernel size 3"):
        checkpoint.save(tmp_path / "w.pt", state) or checkpoint.load_state(tmp_path / "w.pt", kernel_size=5)


@pytest.mark.parametrize("setup, message", [
    ("file", "expected a directory, found a file"),
    ("earlier run", r"found an earlier run \(metrics.json\); overwrite=True replaces it"),
])
def test_run_dir_errors_name_the_path_and_argument_not_a_flag(tmp_path, setup, message):
    out = tmp_path / "run"
    if setup == "file":
        out.write_text("keep")
    else:
        out.mkdir()
        (out / "metrics.json").write_text("{}")
    with pytest.raises(BadFile, match=message) as e:
        runs.prepare_run_dir(out)
    assert str(e.value).startswith(str(out)) and "--" not in str(e.value)


def test_save_refuses_weights_that_load_would_refuse(tmp_path):
    """``save`` of NaN or Inf weights is one ``BadWeights`` and no file, not a checkpoint that
    ``load_state`` then refuses."""
    import numpy as np

    from flax_lenet.app import checkpoint
    from flax_lenet.errors import BadWeights
    from helpers import state_numpy, torch_net
    state = state_numpy(torch_net(3, "float32"))
    state["fc2.bias"] = state["fc2.bias"].copy()
    state["fc2.bias"][3] = np.nan
    for name in ("w.safetensors", "w.pt", "w.orbax"):
        with pytest.raises(BadWeights, match="expected finite weights to save, found NaN or Inf in fc2.bias"):
            checkpoint.save(tmp_path / name, state)
    assert list(tmp_path.iterdir()) == []
    state["fc2.bias"][3] = 0.0
    checkpoint.save(tmp_path / "w.safetensors", state)            # the same weights, finite: saved
    assert (tmp_path / "w.safetensors").is_file()


def install_quiet(monkeypatch) -> list:
    """``cli.quiet_reported_failures``, installed as ``flax-lenet`` installs it at start-up, and
    undone after the test: the hooks it wraps record what reaches them (returned), and the
    loggers' filters are put back."""
    import logging
    import sys

    import absl.logging  # noqa: F401  (absl's own logger, as the command has it)
    from flax_lenet.app import cli
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: seen.append(value))
    for name in ("asyncio", "absl"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "filters", list(logger.filters))
    cli.quiet_reported_failures()
    return seen


@pytest.fixture
def quiet(monkeypatch):
    return install_quiet(monkeypatch)


FULL_DISK = "RESOURCE_EXHAUSTED: Failed writing [os_error_code='28']"


def test_asyncio_reports_of_a_failed_orbax_write_are_dropped_and_no_others(caplog, monkeypatch):
    """On a full disk each Orbax write task fails with tensorstore's ValueError, and asyncio logs
    "Task exception was never retrieved" with a traceback whenever the task is collected: in one
    CI run after the one-line error. ``flax-lenet`` drops exactly those records."""
    import asyncio
    import gc

    def collect_a_failed_task(message):
        async def write():
            raise ValueError(message)

        loop = asyncio.new_event_loop()
        task = loop.create_task(write())
        loop.run_until_complete(asyncio.sleep(0.01))      # the task fails; nobody asks for its result
        loop.close()
        caplog.clear()
        del task
        gc.collect()
        return "\n".join(r.getMessage() for r in caplog.records if r.name == "asyncio")

    assert "Task exception was never retrieved" in collect_a_failed_task(FULL_DISK)     # asyncio's own report
    install_quiet(monkeypatch)
    assert collect_a_failed_task(FULL_DISK) == ""
    assert "Task exception was never retrieved" in collect_a_failed_task("another failure")   # kept


def test_orbax_thread_logs_and_closed_loop_errors_of_a_reported_failure_are_dropped_and_no_others(quiet, caplog):
    """What Orbax's and tensorstore's threads print beside a failure the command reports in one
    line: absl records carrying tensorstore's I/O error (a full disk: 200 lines), and the late
    ``RuntimeError('Event loop is closed')`` of callbacks queued on Orbax's closed loop. Every
    other record and exception still reaches the hook that was there before."""
    import logging
    import sys

    class Dies:
        def __init__(self, message):
            self.message = message

        def __del__(self):
            raise RuntimeError(self.message)

    Dies("Event loop is closed")
    Dies("something else")
    sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)
    sys.excepthook(ValueError, ValueError("a bug"), None)
    assert [str(e) for e in quiet] == ["something else", "a bug"]

    logger = logging.getLogger("absl")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="absl"):
        for message in (FULL_DISK, "another failure"):
            try:
                raise ValueError(message)
            except ValueError:
                logger.exception("_SignalingThread.run() raised an exception")
        logger.error("no exception with it")
    assert [(r.getMessage(), str(r.exc_info[1]) if r.exc_info else None) for r in caplog.records] == [
        ("_SignalingThread.run() raised an exception", "another failure"), ("no exception with it", None)]


def test_saving_and_loading_change_no_process_wide_hook_or_logger(tmp_path, state):
    """Only the ``flax-lenet`` entry point installs them (``cli.run``): a library call, even one
    that fails inside Orbax, leaves ``sys``'s hooks and the loggers as they were."""
    import logging
    import sys

    import orbax.checkpoint  # noqa: F401  (its import configures logging: not this module's doing)

    def snapshot():
        return (sys.unraisablehook, sys.excepthook,
                {name: (list(logging.getLogger(name).filters), logging.getLogger(name).disabled)
                 for name in ("absl", "asyncio")})

    before = snapshot()
    checkpoint.save(tmp_path / "w.orbax", state)
    checkpoint.save(tmp_path / "w.orbax", state, overwrite=True)
    checkpoint.load_state(tmp_path / "w.orbax")
    (tmp_path / "w.orbax" / "_METADATA").write_bytes(b"\xff" * 16)
    (tmp_path / "w.orbax" / checkpoint.SIDECAR).unlink()              # as from another tool: Orbax reads it
    with pytest.raises(BadFile, match="cannot be read"):
        checkpoint.load_state(tmp_path / "w.orbax")
    assert snapshot() == before
