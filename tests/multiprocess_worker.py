"""One process of the two-process data-parallel run that ``tests/test_multiprocess.py`` starts.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
        python tests/multiprocess_worker.py PORT PROCESS_ID NUM_PROCESSES OUT.json [--local-only]

Every process runs this same program (SPMD): it joins the others through
``jax.distributed.initialize`` (coordinator on localhost:PORT), builds the same Net from the
same seed, loads only its own rows of each global batch and runs the unchanged
``flax_lenet.fast.train_step`` (the CLI's step) on a mesh over the devices of all processes; XLA sums the gradients
across processes (gloo, JAX's default CPU collectives). Process 0 also runs the same steps on
one device, on the whole batch, and writes both parameter sets' largest relative difference.
``--local-only`` is the broken twin: each process's mesh spans only its own devices, so the
gradients are never summed across processes.
"""

import json
import sys

import jax

PORT, PID, NPROC, OUT = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
LOCAL_ONLY = "--local-only" in sys.argv
jax.config.update("jax_cpu_collectives_implementation", "gloo")      # JAX's default, said aloud
jax.distributed.initialize(coordinator_address=f"localhost:{PORT}", num_processes=NPROC, process_id=PID)
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from flax_lenet import Net, parallel  # noqa: E402
from flax_lenet.fast import train_step  # noqa: E402

BATCH, STEPS = 16, 3


def params_of(model) -> dict:
    """This process's copy of the (replicated) parameters, as numpy."""
    return {"/".join(map(str, k)): np.asarray(v.addressable_data(0) if hasattr(v, "addressable_data") else v)
            for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def run(dtype, mesh):
    """STEPS steps on the global batches; ``mesh=None``: one device, the whole batch."""
    model = Net(3, param_dtype=dtype, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((BATCH, 32, 32, 1)), rng.standard_normal((BATCH, 10)))
               for _ in range(STEPS)]
    if mesh is not None:
        parallel.replicate((model, optimizer), mesh)
        rows = BATCH // NPROC
        lo = PID * rows                               # this process's rows of the global batch
    for x, y in batches:
        x, y = x.astype(dtype), y.astype(dtype)
        if mesh is not None:
            x = parallel.shard_batch(x[lo:lo + rows], mesh, local=True)
            y = parallel.shard_batch(y[lo:lo + rows], mesh, local=True)
        train_step(model, optimizer, x, y)
    return params_of(model)


def rel(a, b) -> float:
    return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in b)


out = {"processes": jax.process_count(), "devices": len(jax.devices()),
       "local_devices": len(jax.local_devices())}
mesh = parallel.batch_mesh(jax.local_devices() if LOCAL_ONLY else jax.devices())
for name, dtype in (("float32", jnp.float32), ("float64", jnp.float64)):
    spread = run(dtype, mesh)
    if PID == 0:
        with jax.default_device(jax.local_devices()[0]):
            out[name] = rel(spread, run(dtype, None))
if PID == 0:
    with open(OUT, "w") as f:
        json.dump(out, f)
jax.distributed.shutdown()
