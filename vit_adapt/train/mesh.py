"""Data-parallel device mesh: one axis 'data' over every device of every host.

Parameters and optimizer state are replicated (`P()`), batches are split along their first axis
(`P('data')`). Each host feeds its own slice of the global batch; `global_batch` assembles the slices into one
global array, so the same jitted step runs on 1 CPU, 8 GPUs or a multi-host TPU slice.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_adapt.errors import UserError

_initialized = False


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when the environment describes a multi-process job.

  JAX auto-detects the coordinator on Cloud TPU pods, SLURM and Open MPI; `JAX_COORDINATOR_ADDRESS` (+
  `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) configures it explicitly. A single process needs nothing.
  """
  global _initialized
  if _initialized:
    return
  env = os.environ
  multi = (bool(env.get("JAX_COORDINATOR_ADDRESS"))
           or int(env.get("SLURM_NTASKS", "1") or 1) > 1
           or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
           or "," in env.get("TPU_WORKER_HOSTNAMES", ""))
  if multi:
    jax.distributed.initialize()
  _initialized = True


def make_mesh() -> Mesh:
  # Auto axes: the partitioner propagates shardings from the jit boundary (plain data parallelism); the
  # default of jax.make_mesh in JAX 0.10 is Explicit axes, which would demand sharding annotations in the model.
  return Mesh(np.asarray(jax.devices()), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, key: str, mesh: Mesh) -> int:
  """-> the per-process batch size; the global batch must split evenly over devices and hosts."""
  n = mesh.devices.size
  if batch_size % n or batch_size % jax.process_count():
    raise UserError(f"{key}={batch_size} is not divisible by the {n} devices of the data mesh "
                    f"({jax.process_count()} processes): set {key} to a multiple of {n}.")
  return batch_size // jax.process_count()


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Host-local numpy batch (this process's rows) -> global jax arrays sharded along 'data'."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def replicate(tree, sharding: NamedSharding):
  """Puts an identical-on-every-host pytree on every device (works across processes too)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)
