"""Importing flax_lenet changes no global state, and ``flax_lenet.Net`` is ``flax_lenet.model.Net``.

Each check runs in a fresh process: it records what a library could change behind a user's back
(every jax config value, every signal handler, ``sys.excepthook`` and ``sys.unraisablehook``, the
root logger's handlers and level and every logger's ``disabled`` flag, the warning filters, the
environment), imports every module of ``flax_lenet`` (the app included) in one order or the
other, records it all again, and builds a Net. The two orders must leave everything as it was
and build the same Net, bit for bit.
"""

import json
import subprocess
import sys

import pytest

# fresh processes, one per import order: the slow tier
pytestmark = pytest.mark.slow

SCRIPT = r'''
import hashlib, json, logging, os, pkgutil, signal, sys, warnings, importlib
import jax

def snapshot():
    handlers = {}
    for s in signal.valid_signals():
        try:
            handlers[int(s)] = repr(signal.getsignal(s))
        except (ValueError, OSError):
            pass
    root = logging.getLogger()
    return {
        "jax.config": {k: repr(getattr(jax.config, k, None)) for k in sorted(jax.config.values)},
        "signals": handlers,
        "excepthook": repr(sys.excepthook), "unraisablehook": repr(sys.unraisablehook),
        "root handlers": [repr(h) for h in root.handlers], "root level": root.level,
        "disabled loggers": sorted(n for n, lg in logging.root.manager.loggerDict.items()
                                   if isinstance(lg, logging.Logger) and lg.disabled),
        "warning filters": [repr(f) for f in warnings.filters],
        "environ": dict(os.environ),
    }

before = snapshot()
FIRST = sys.argv[1]
if FIRST == "model":
    import flax_lenet.model as m
    import flax_lenet as f
else:
    import flax_lenet as f
    f.Net
    import flax_lenet.model as m
import flax_lenet
for info in pkgutil.walk_packages(flax_lenet.__path__, "flax_lenet."):
    if info.name != "flax_lenet.__main__":
        importlib.import_module(info.name)
after = snapshot()
from flax import nnx
net = f.Net(rngs=nnx.Rngs(0))
digest = hashlib.sha256()
for leaf in jax.tree.leaves(nnx.state(net, nnx.Param)):
    digest.update(jax.device_get(leaf).tobytes())
print(json.dumps({"same object": f.Net is m.Net,
                  "changed": sorted(k for k in before if before[k] != after[k]),
                  "diff": {k: [str(before[k])[:300], str(after[k])[:300]] for k in before if before[k] != after[k]},
                  "net": digest.hexdigest()}))
'''


@pytest.fixture(scope="module")
def runs():
    out = {}
    for first in ("model", "package"):
        proc = subprocess.run([sys.executable, "-c", SCRIPT, first], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        out[first] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("first", ["model", "package"])
def test_importing_every_module_changes_no_global_state(runs, first):
    assert runs[first]["changed"] == [], runs[first]["diff"]


def test_flax_lenet_net_is_model_net_and_builds_alike_whatever_was_imported_first(runs):
    assert runs["model"]["same object"] and runs["package"]["same object"]
    assert runs["model"]["net"] == runs["package"]["net"]


def test_the_snapshot_sees_a_changed_handler_config_value_and_disabled_logger():
    """Broken twin: the same script, with a module that changes each of those on import."""
    evil = ("import jax, signal, logging, sys; jax.config.update('jax_enable_x64', True); "
            "signal.signal(signal.SIGINT, lambda *a: None); logging.getLogger('absl').disabled = True; "
            "sys.excepthook = lambda *a: None\n")
    script = SCRIPT.replace("after = snapshot()", f"exec({evil!r})\nafter = snapshot()")
    script = script.replace("for info in pkgutil.walk_packages(flax_lenet.__path__, \"flax_lenet.\"):", "for info in []:")
    proc = subprocess.run([sys.executable, "-c", script, "model"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    changed = json.loads(proc.stdout.strip().splitlines()[-1])["changed"]
    assert changed == ["disabled loggers", "excepthook", "jax.config", "signals"], changed
