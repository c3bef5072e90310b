"""The data-parallel step over 8 simulated CPU devices equals the single-device step.

XLA fixes the number of host devices when it starts, so the check runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; it prints the differences as JSON.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from flax_lenet.porting.tolerances import SHARDED_FLOAT32, SHARDED_FLOAT64

DEVICES = 8
BATCH = 16          # two rows per device
STEPS = 3

SCRIPT = textwrap.dedent(f"""
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np, optax
    from flax import nnx
    from flax_lenet import Net, parallel
    from flax_lenet.fast import train_step

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(({BATCH}, 32, 32, 1)), rng.standard_normal(({BATCH}, 10))

    def params_of(m):
        return {{"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}}

    def net(dtype):
        # weights from numpy, not Net's eager initialisers (many small compiles in a fresh process)
        m = nnx.eval_shape(lambda: Net(3, param_dtype=dtype, rngs=nnx.Rngs(0)))
        w = np.random.default_rng(2)
        nnx.update(m, jax.tree.map(lambda v: jnp.asarray(0.1 * w.standard_normal(v.shape), dtype),
                                   nnx.state(m, nnx.Param)))
        return m

    def run(dtype, sharded, rows={BATCH}):
        m = net(dtype)
        o = nnx.Optimizer(m, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
        xb, yb = jnp.asarray(x[:rows], dtype), jnp.asarray(y[:rows], dtype)
        if sharded:
            mesh = parallel.batch_mesh()
            parallel.replicate((m, o), mesh)
            xb, yb = parallel.shard_batch(xb, mesh), parallel.shard_batch(yb, mesh)
        losses = [float(train_step(m, o, xb, yb)) for _ in range({STEPS})]
        spec = m.fc1.kernel[...].sharding.spec if sharded else None
        return losses, params_of(m), spec

    def rel(a, b):
        return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in b)

    out = {{"devices": len(jax.devices())}}
    single = {{}}
    for name, dtype in (("float32", jnp.float32), ("float64", jnp.float64)):
        l1, single[name], _ = run(dtype, False)
        l8, p8, spec = run(dtype, True)
        out[name] = {{"params": rel(p8, single[name]),
                     "loss": max(abs(a - b) / abs(b) for a, b in zip(l8, l1)), "spec": str(spec)}}
    # the broken variant: without the cross-device gradient sum, device 0 steps on its own rows only
    out["no_allreduce"] = rel(run(jnp.float32, False, rows={BATCH // DEVICES})[1], single["float32"])
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def sharded_run():
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
               JAX_PLATFORMS="cpu")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([repo] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_subprocess_sees_eight_devices(sharded_run):
    assert sharded_run["devices"] == DEVICES


@pytest.mark.parametrize("dtype,tol", [("float32", SHARDED_FLOAT32), ("float64", SHARDED_FLOAT64)])
def test_sharded_step_matches_single_device(sharded_run, dtype, tol):
    got = sharded_run[dtype]
    assert got["params"] <= tol.rtol, f"{dtype} params after {STEPS} steps: {got['params']:.3e} > {tol.rtol:.0e}"
    assert got["loss"] <= tol.rtol, f"{dtype} losses: {got['loss']:.3e} > {tol.rtol:.0e}"


def test_sharded_parameters_stay_replicated(sharded_run):
    assert sharded_run["float32"]["spec"] in ("P()", "PartitionSpec()")


def test_step_without_gradient_allreduce_is_caught(sharded_run):
    # the same checker, on a data-parallel step that never sums gradients across devices
    assert sharded_run["no_allreduce"] > 100 * SHARDED_FLOAT32.rtol
