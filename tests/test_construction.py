"""Building a Net compiles nothing per parameter, and its initialisers agree eagerly and traced.

Flax's own initialisers run as eager JAX ops, and each new shape compiles a program: a fresh
process compiled some 40 of them for one ``Net`` (3 s on 2 cores). ``flax_lenet.initializers``
draws Flax's default distributions in numpy instead. The count is of XLA compilations (JAX's
monitoring events) in a fresh process, so earlier tests cannot have warmed anything.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax_lenet import Net, linen
from flax_lenet.initializers import lecun_normal, zeros

CHILD = """
import json, sys
import jax
from flax import nnx
from jax._src import monitoring
import flax_lenet

compiles = []
monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: compiles.append(event) if event.endswith("backend_compile_duration") else None)
if sys.argv[1] == "flax-defaults":     # the broken twin: the same Net with Flax's own initialisers
    flax_lenet.model.lecun_normal = nnx.initializers.lecun_normal
    flax_lenet.model.zeros = nnx.initializers.zeros_init()
build = lambda k, rngs: flax_lenet.Net(k, rngs=rngs)
rngs = nnx.Rngs(0)
build(3, rngs)
first = len(compiles)
build(5, rngs)                          # every parameter a new shape
print(json.dumps({"first": first, "second": len(compiles) - first}))
"""


def compiles_in_a_fresh_process(mode: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_building_a_net_compiles_nothing_per_parameter():
    found = compiles_in_a_fresh_process("net")
    assert found["first"] <= 6, found        # nnx.Rngs's own key handling, not the parameters
    assert found["second"] == 0, found       # ten new parameter shapes, no new program


@pytest.mark.slow     # a broken twin in a fresh process: seconds, off the fast tier
def test_the_count_sees_flax_initialisers_compiling_per_shape():
    """The broken twin: Flax's own initialisers compile again for every new shape."""
    found = compiles_in_a_fresh_process("flax-defaults")
    assert found["second"] >= 3, found       # at least the three new kernel shapes


def tree_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_nnx_net_draws_the_same_weights_eagerly_under_jit_and_shapes_under_eval_shape():
    eager = nnx.state(Net(rngs=nnx.Rngs(3)), nnx.Param)
    jitted = nnx.state(nnx.jit(lambda: Net(rngs=nnx.Rngs(3)))(), nnx.Param)
    assert tree_equal(eager, jitted)
    abstract = nnx.eval_shape(lambda: Net(rngs=nnx.Rngs(3)))
    assert abstract.fc1.kernel.get_value().shape == (576, 120)
    assert not tree_equal(eager, nnx.state(Net(rngs=nnx.Rngs(4)), nnx.Param))   # a seed matters


def test_linen_init_is_the_same_eagerly_and_jitted():
    x, key = jnp.zeros((1, 32, 32, 1)), jax.random.key(7)
    assert tree_equal(linen.Net(5).init(key, x), jax.jit(linen.Net(5).init)(key, x))


def test_initialisers_follow_the_key_under_vmap_and_take_raw_keys():
    keys = jax.random.split(jax.random.key(0), 3)
    stacked = jax.vmap(lambda k: lecun_normal()(k, (4, 5), jnp.float32))(keys)
    for i in range(3):
        np.testing.assert_array_equal(stacked[i], lecun_normal()(keys[i], (4, 5), jnp.float32))
    assert not np.array_equal(stacked[0], stacked[1])
    raw = jax.random.PRNGKey(0)                                      # an old-style uint32 key
    assert lecun_normal()(raw, (3, 3, 1, 6), jnp.float32).shape == (3, 3, 1, 6)
    assert not np.any(zeros(raw, (6,), jnp.float32)) and zeros(raw, (6,)).dtype == jnp.float32
