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
