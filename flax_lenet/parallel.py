"""The same train step, data-parallel over every local device: a ``Mesh`` over the batch axis.

Nothing about the step changes. ``jax.jit`` follows the shardings of its inputs: put the
parameters (and optimizer state) on every device, split the batch along ``N``, and the compiled
step computes each device's share of the forward and backward pass and sums the gradients
across devices (an all-reduce that XLA inserts) before the update, so every replica applies
the same update. torch's equivalent is ``DistributedDataParallel``.

    mesh = batch_mesh()                         # all local devices, one axis named 'batch'
    replicate((model, optimizer), mesh)         # parameters and optimizer state on every device
    x, y = shard_batch(x, mesh), shard_batch(y, mesh)
    loss = fast.train_step(model, optimizer, x, y)   # unchanged, now data-parallel (train.train_step too)

The batch size must be a multiple of the number of devices.

Several processes (several hosts, or several GPUs with one process each): every process runs
the same program and calls ``jax.distributed.initialize()`` before anything else touches JAX
(on a cluster it reads the coordinator, process count and id from the environment -- SLURM,
Open MPI, Kubernetes, TPU pods -- otherwise pass ``coordinator_address='host0:1234',
num_processes=P, process_id=i``). ``jax.devices()`` then lists the devices of all processes,
so ``batch_mesh()`` spans them; each process loads only its own rows of every global batch
(its devices' share, in ``jax.devices()`` order: process ``i`` of ``P`` takes rows
``i*N/P .. (i+1)*N/P``) and assembles the global array with ``shard_batch(local_x, mesh,
local=True)`` (``jax.make_array_from_process_local_data``). Parameters stay replicated, so
any process can save them (``jax.process_index() == 0`` by convention). Across processes the
gradient sum is a real collective: NCCL between GPUs, gloo on CPU (JAX's default,
``jax_cpu_collectives_implementation``).

``tests/multiprocess_worker.py`` is such a program, and ``tests/test_multiprocess.py`` launches
it as 2 processes of 2 CPU devices each on one machine (``XLA_FLAGS=
--xla_force_host_platform_device_count=2``); on several hosts ``coordinator_address`` is process
0's host, or ``srun`` under SLURM with ``jax.distributed.initialize()`` and no arguments.
"""

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flax_lenet.errors import BadImages

BATCH_AXIS = "batch"


def batch_mesh(devices=None) -> Mesh:
    """A one-axis ``Mesh`` named ``'batch'`` over ``devices`` (default: all of ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (BATCH_AXIS,))


def replicate(tree, mesh: Mesh):
    """Put every array (and NNX Variable) of ``tree`` on every device of ``mesh``; NNX objects in place.

    Args:
      tree: an NNX module / optimizer, a tuple of them, or a pytree of arrays.
      mesh: the mesh from ``batch_mesh``.

    Returns:
      ``tree`` with replicated arrays (NNX objects are also updated in place).
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    nodes = tree if isinstance(tree, tuple) else (tree,)
    if nodes and all(isinstance(t, nnx.Pytree) for t in nodes):   # nnx.Module, nnx.Optimizer
        for node in nodes:
            nnx.update(node, jax.device_put(nnx.state(node), sharding))
        return tree
    return jax.device_put(tree, sharding)


def shard_batch(x, mesh: Mesh, *, local: bool = False):
    """Split ``x`` along its first axis over the ``'batch'`` axis of ``mesh``.

    Args:
      x: the global batch (or, with ``local=True``, this process's slice of it).
      mesh: the mesh from ``batch_mesh``.
      local: multi-host: ``x`` is this process's rows; the global array is assembled from all.

    Returns:
      A global ``jax.Array`` sharded over devices along ``N``.
    """
    n_dev = mesh.shape[BATCH_AXIS]
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    if local:
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))
    if x.shape[0] % n_dev:
        raise BadImages(f"expected a batch size that is a multiple of the {n_dev} devices, found {x.shape[0]}")
    return jax.device_put(x, sharding)
