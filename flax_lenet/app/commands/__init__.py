"""One module per ``flax-lenet`` subcommand: ``add_arguments(parser)`` and ``main(args)``."""

import contextlib
import sys
import warnings


def print_notes(command: str, notes) -> None:
    """Each note as one line on stderr, ``flax-lenet COMMAND: note: ...``, once the work is done
    (so that a failure before it stays one line)."""
    for note in notes:
        print(f"flax-lenet {command}: note: {note}", file=sys.stderr)


@contextlib.contextmanager
def state_dict_notices():
    """Collect each ``port.StateDictNotice`` (a stripped DataParallel/compile prefix) once, as one
    line in the list this yields, for the command to print as one line on stderr instead of
    Python's two-line warning; any other warning is passed on unchanged."""
    from flax_lenet.porting.port import StateDictNotice
    seen: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StateDictNotice)
        yield seen
    for w in caught:
        if issubclass(w.category, StateDictNotice):
            if str(w.message) not in seen:
                seen.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
