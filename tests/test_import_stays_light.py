"""``import flax_lenet`` stays light: alone it loads not even jax (its names load on first use), and
the library it names (``__all__``, and the modules beside it outside ``porting`` and ``app``) loads
no torch, sklearn, matplotlib, orbax or tqdm, and no pygments beyond what jax itself loads."""

import json
import subprocess
import sys

import pytest

# fresh processes that import the package: the slow tier
pytestmark = pytest.mark.slow

HEAVY = {"torch", "sklearn", "matplotlib", "orbax", "tqdm", "pygments"}
LIBRARY = ("from flax_lenet import *; import flax_lenet.parallel, flax_lenet.cache, flax_lenet.checks, "
           "flax_lenet.errors, flax_lenet.accumulate")


def _loaded_after(*stages: str) -> list[set[str]]:
    """The top-level modules loaded after each of ``stages``, run in turn in one fresh process."""
    code = "import json, sys\nloaded = []\n" + "".join(
        f"{stage}\nloaded.append(sorted({{m.split('.')[0] for m in sys.modules}}))\n" for stage in stages)
    out = subprocess.run([sys.executable, "-c", code + "print(json.dumps(loaded))"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return [set(names) for names in json.loads(out.splitlines()[-1])]


def test_import_flax_lenet_loads_no_jax_and_its_library_nothing_heavy():
    # jax's own debugger imports pygments when it is installed, so pygments is judged against
    # what `import jax, flax.nnx, optax` alone loads; the rest must not be loaded at all
    [baseline] = _loaded_after("import jax, flax.nnx, optax, numpy")
    package, library = _loaded_after("import flax_lenet", LIBRARY)
    assert not ({"jax", "flax", "optax"} | HEAVY) & package, package
    assert "flax" in library and not (HEAVY - {"pygments"}) & library, library
    assert not (HEAVY & library) - baseline


@pytest.mark.parametrize("code, module", [("import flax_lenet.app.training; import torch_reference", "torch"),
                                          ("import flax_lenet; flax_lenet.Net", "jax")],
                         ids=["torch", "jax on first use"])
def test_the_import_check_sees_a_heavy_import(code, module):
    [loaded] = _loaded_after(code)
    assert module in loaded
