"""``flax-lenet --help`` is written for users: what the tool is for, then its commands."""

import pytest

from flax_lenet.app import cli


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_opens_with_what_the_tool_is_for_then_lists_every_command(capsys):
    text = _help(capsys)
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith("usage: flax-lenet")
    assert description.startswith("Run the LeNet of PyTorch's") and "Flax" in description
    assert "thin layer" not in text and "``" not in text            # not the module's developer docstring
    assert text.index("Run the LeNet") < text.index("commands:")
    listed = [line.split()[0] for line in text.split("commands:")[1].splitlines() if line.startswith("    ")]
    assert [name for name in listed if name in cli.COMMANDS] == list(cli.COMMANDS)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_its_own_help(capsys, command):
    text = _help(capsys, command)
    assert text.startswith(f"usage: flax-lenet {command}")
    assert cli.COMMANDS[command].split(" (")[0][:40] in " ".join(text.split())


def test_the_docs_generator_is_not_a_command(capsys):
    """It needs the repository (tests/port_models.py, keras, pygments): ``python -m docs.build`` runs it."""
    assert "docs" not in cli.COMMANDS
    assert "docs" not in _help(capsys).split("commands:")[1].split()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["docs"])
    assert exit_.value.code == 2 and "invalid choice: 'docs'" in capsys.readouterr().err


HEAVY = ("jax", "torch", "flax", "optax", "absl")
PROBE = """
import sys
from flax_lenet.app import cli
try:
    cli.run()
except SystemExit as e:
    code = e.code
print("EXIT", code, sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["compare", "--flavour", "nope"],
                                  ["train", "--epochs", "x"], ["bench", "--device", "tpu"], ["no-such-command"]],
                         ids=["help", "train help", "bad choice", "bad number", "bad device", "bad command"])
def test_help_and_usage_errors_import_neither_jax_nor_torch(argv):
    """What makes ``flax-lenet --help`` quick (docs/benchmarks.md times it): the entry point itself,
    run as the console script runs it, answers before any framework is imported."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True,
                          text=True, timeout=120)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("EXIT 0" if "--help" in argv else "EXIT 2"), proc.stdout + proc.stderr
    assert last.endswith("[]"), last


def test_the_import_probe_sees_a_framework_a_command_imports():
    """Broken twin: a run that gets as far as a command imports jax, and the probe says so."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), "compare", "--seed", "-1"],
                          capture_output=True, text=True, timeout=300)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("EXIT 2") and "'jax'" in last, proc.stdout + proc.stderr
