"""Bad input and bugs look different: ``BadInput`` is one line and exit 2, anything else a traceback.

``flax_lenet.errors`` names bad input; ``flax-lenet`` (``flax_lenet.app.cli``) prints a
``BadInput`` as one line and exits 2, and lets every other exception -- a bug in this project or
in a library under it -- propagate with its traceback (exit 1 from the console script).
"""

import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flax_lenet import errors
from flax_lenet.app import checkpoint, cli, training

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "flax_lenet"
KINDS = ("BadImages", "BadLabels", "BadWeights", "BadConfig", "BadFile")


def _env() -> dict:
    """The test's environment, with the repository importable and the compilation cache off."""
    path = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, PYTHONPATH=path, FLAX_LENET_CACHE="0", JAX_PLATFORMS="cpu")
    env.pop("FLAX_LENET_DEBUG", None)
    return env


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("FLAX_LENET_DEBUG", raising=False)


# --- the kinds ---------------------------------------------------------------------------------

def test_every_kind_in_errors_is_bad_input_and_a_value_error():
    classes = {name: obj for name, obj in vars(errors).items()
               if inspect.isclass(obj) and issubclass(obj, BaseException)}
    assert set(KINDS) | {"BadInput"} <= set(classes)
    for name, cls in classes.items():
        assert issubclass(cls, errors.BadInput), name
        assert issubclass(cls, ValueError), name           # `except ValueError` keeps working


def test_the_apps_own_error_types_are_bad_input():
    assert issubclass(training.TrainingDiverged, errors.BadInput)
    assert issubclass(cli.UsageError, errors.BadInput)


# --- what the CLI does with each -------------------------------------------------------------

def _raise_from_load(monkeypatch, error):
    """Make ``flax-lenet convert``'s checkpoint loading raise ``error``, as a deep failure would."""
    def load_state(path, *, kernel_size=None, notes=None):
        raise error
    monkeypatch.setattr(checkpoint, "load_state", load_state)


@pytest.mark.parametrize("kind", KINDS + ("BadInput",))
def test_bad_input_raised_deep_inside_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, kind):
    _raise_from_load(monkeypatch, getattr(errors, kind)("w.pt: expected a thing, found another"))
    rc = cli.main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "out.pt")])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert err == "flax-lenet convert: error: w.pt: expected a thing, found another\n"


def test_a_bad_input_message_with_a_newline_still_prints_one_line(tmp_path, monkeypatch, capsys):
    _raise_from_load(monkeypatch, errors.BadFile("w.pt: expected a file,\nfound two lines"))
    assert cli.main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "out.pt")]) == 2
    assert capsys.readouterr().err == "flax-lenet convert: error: w.pt: expected a file, found two lines\n"


def test_debug_variable_reraises_bad_input_with_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAX_LENET_DEBUG", "1")
    _raise_from_load(monkeypatch, errors.BadWeights("expected 10 keys, found 9"))
    with pytest.raises(errors.BadWeights, match="expected 10 keys, found 9"):
        cli.main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "out.pt")])


@pytest.mark.parametrize("bug", [ValueError("a plain ValueError"), KeyError("conv9.weight"),
                                 OSError(5, "Input/output error"), TypeError("a plain TypeError")],
                         ids=lambda e: type(e).__name__)
def test_a_bug_propagates_from_main_instead_of_exit_2(tmp_path, monkeypatch, capsys, bug):
    _raise_from_load(monkeypatch, bug)
    with pytest.raises(type(bug)) as raised:
        cli.main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "out.pt")])
    assert raised.value is bug and not isinstance(raised.value, errors.BadInput)
    assert "error:" not in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    _raise_from_load(monkeypatch, KeyboardInterrupt())
    assert cli.main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "out.pt")]) == 130
    assert capsys.readouterr().err == "flax-lenet convert: interrupted\n"


BUGGY_CONVERT = """\
import sys
import flax_lenet.app.commands.convert as command
from flax_lenet.app import cli

def main(args):
    raise {error}

command.main = main
sys.argv = ["flax-lenet", "convert", "in.pt", "out.pt"]
cli.run()
"""


@pytest.mark.parametrize("error, shown", [
    ('ValueError("a deliberate bug")', "ValueError: a deliberate bug"),
    ('KeyError("conv9.weight")', "KeyError: 'conv9.weight'"),
    ('OSError(5, "Input/output error")', "OSError: [Errno 5] Input/output error"),
], ids=["ValueError", "KeyError", "OSError"])
def test_a_bug_exits_1_with_a_traceback_in_a_real_process(tmp_path, error, shown):
    proc = subprocess.run([sys.executable, "-c", BUGGY_CONVERT.format(error=error)], capture_output=True,
                          text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc
    assert "Traceback (most recent call last)" in proc.stderr and shown in proc.stderr
    assert "error:" not in proc.stderr.splitlines()[0]


def test_bad_input_in_a_real_process_is_one_line_and_exit_2(tmp_path):
    script = BUGGY_CONVERT.replace("import sys\n", "import sys\nfrom flax_lenet.errors import BadFile\n")
    proc = subprocess.run([sys.executable, "-c", script.format(error='BadFile("in.pt: expected x, found y")')],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc
    assert proc.stderr == "flax-lenet convert: error: in.pt: expected x, found y\n"


# --- what the code raises ----------------------------------------------------------------------

def _raises(path: Path):
    """Every ``raise`` statement in a source file, as ``(line, node)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node) for node in ast.walk(tree) if isinstance(node, ast.Raise) and node.exc]


def _library_and_app_files():
    return sorted(PACKAGE.rglob("*.py"))


OS_AND_KEY_ERRORS = {"KeyError", "FileNotFoundError", "FileExistsError", "NotADirectoryError",
                     "IsADirectoryError", "PermissionError", "OSError"}


def test_no_code_raises_key_or_os_errors_for_input():
    found = []
    for path in _library_and_app_files():
        for line, node in _raises(path):
            call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(call, ast.Name) and call.id in OS_AND_KEY_ERRORS:
                found.append(f"{path.relative_to(REPO)}:{line} raises {call.id}")
    assert _library_and_app_files() and not found, found


def test_errors_outside_the_command_layer_name_no_command_line_flags():
    command_layer = {PACKAGE / "app" / "cli.py"} | set((PACKAGE / "app" / "commands").glob("*.py"))
    found = []
    for path in _library_and_app_files():
        if path in command_layer:
            continue
        for line, node in _raises(path):
            text = " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))
            if re.search(r"(^|[\s(:])--[a-z]", text):
                found.append(f"{path.relative_to(REPO)}:{line}: {text}")
    assert not found, found
