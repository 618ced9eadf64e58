"""Data-parallel device mesh: one axis 'data' over every device of every host.

Parameters and optimizer state are replicated (`P()`), batches are split along their first axis
(`P('data')`). Each host feeds its own slice of the global batch; `global_batch` assembles the slices into one
global array, so the same jitted step runs on 1 CPU, 8 GPUs or a multi-host TPU slice.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_adapt.errors import UserError
from vit_adapt.train import cluster

_initialized = False


def maybe_initialize_distributed() -> cluster.Launch | None:
  """Initialises `jax.distributed` when this process is one of a multi-process job (`cluster.detect`: explicit
  JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, Open MPI, SLURM, Cloud TPU pod slices); a single
  process needs nothing. Must run before anything touches a JAX backend. -> the launch, or None."""
  global _initialized
  if _initialized or jax.distributed.is_initialized():  # once per process (the caller may have done it)
    return None
  launch = cluster.detect(os.environ, cluster.DEFAULT_PROBES)
  if launch is not None:
    logging.info("Multi-process job (%s): jax.distributed.initialize(%s)", launch.kind,
                 ", ".join(f"{k}={v!r}" for k, v in launch.init_kwargs.items()))
    jax.distributed.initialize(**launch.init_kwargs)
    logging.info("Process %d of %d: %d local devices of %d", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
  _initialized = True
  return launch


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


def is_host_field(value) -> bool:
  """String fields of a batch (e.g. the names of skipped videos) are for the host: no device holds text."""
  return np.asarray(value).dtype.kind in "USO"


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Host-local numpy batch (this process's rows) -> global jax arrays sharded along 'data' (host-only string
  fields left out)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
          if not is_host_field(v)}


def replicate(tree, sharding: NamedSharding):
  """Puts an identical-on-every-host pytree on every device (works across processes too)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)
