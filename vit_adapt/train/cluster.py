"""Which launcher started this process, and how the processes of a multi-host job find each other.

`detect(env, probes)` is a pure function of an environment mapping (plus probes of the machine, injectable for
tests) -> the arguments of `jax.distributed.initialize`, or None for a single-process run. The launchers, tried in
this order (jax's own auto-detection order, after the explicit variables):

  explicit  JAX_COORDINATOR_ADDRESS=host:port + JAX_NUM_PROCESSES + JAX_PROCESS_ID (the count and id may instead
            come from SLURM or Open MPI); nothing is auto-detected then (JAX_LOCAL_DEVICE_IDS still applies)
  ompi      `mpirun` of Open MPI <= 4 with more than one rank (jax's `OmpiCluster`: OMPI_MCA_orte_hnp_uri)
  slurm     an `srun` step with more than one task (jax's `SlurmCluster`: SLURM_JOB_ID, SLURM_STEP_NODELIST,
            SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID)
  tpu-gke   a Cloud TPU VM in a GKE multi-host slice (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES with more
            than one host, or MEGASCALE_NUM_SLICES > 1; jax's `GkeTpuCluster`)
  tpu-gce   a Cloud TPU VM of a multi-host pod slice created with `gcloud ... tpu-vm create` or queued resources:
            its workers are listed only by the GCE metadata server, not the environment (jax's `GceTpuCluster`)

For the cluster launchers jax's cluster environments (`jax._src.clusters`) derive the coordinator address, the
process count and id; this module only decides that the job has several processes (a one-task `srun` or a
single-host TPU VM stays a plain single-process run) and, on GPU nodes, which GPUs each process drives: jax's
default for SLURM and Open MPI is one GPU per process (the one of its local rank), which would leave 7 of 8 GPUs
idle under one task per node. Here the node's visible GPUs are split evenly over the tasks on the node.

VIT_ADAPT_SINGLE_PROCESS=1 makes a process a single-process run whatever the launcher's variables say: a sweep
sets it for its child runs, each pinned to one device, which inherit the variables of the job that started the
sweep (e.g. one sweep per host of a pod slice or per task of an `srun`).

Open MPI 5 (PRRTE) no longer exports OMPI_MCA_orte_hnp_uri, so jax cannot find its coordinator: such a job is
told to set JAX_COORDINATOR_ADDRESS (ranks then come from OMPI_COMM_WORLD_*).
"""

from __future__ import annotations

import dataclasses
import glob
import re
from typing import Callable, Mapping

from absl import logging

from vit_adapt.errors import UserError


@dataclasses.dataclass(frozen=True)
class Probes:
  """What the environment does not say: looked up only when a launcher's check needs it."""
  tpu_vm: Callable[[], bool]         # jax found TPU chips and libtpu on this machine (a Cloud TPU VM)
  gce_tpu_processes: Callable[[], int]  # processes of this TPU slice(s) per the GCE metadata server (1: unknown)
  gpu_count: Callable[[], int]       # NVIDIA GPUs on this machine (/dev/nvidia<N>)


@dataclasses.dataclass(frozen=True)
class Launch:
  """A multi-process job: the launcher that started it and the `jax.distributed.initialize` arguments."""
  kind: str
  init_kwargs: dict


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int | None:
  value = env.get(key, "").strip()
  if not value:
    return default
  try:
    return int(value)
  except ValueError:
    raise UserError(f"the environment variable {key}={value!r} is not an integer: fix or unset it "
                    "(it describes this process's place in a multi-process job).") from None


# ---------------------------------------------------------------------------------------------------- GPUs
def _tasks_on_node(env: Mapping[str, str]) -> tuple[int, int] | None:
  """(tasks of this job on this node, this task's rank among them), when the launcher says."""
  if "OMPI_COMM_WORLD_LOCAL_SIZE" in env:
    return _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"), _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0)
  per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
  if per_node and "SLURM_LOCALID" in env:
    counts = []  # SLURM's compressed form, node by node: "2(x3),1" = [2, 2, 2, 1]
    for part in per_node.split(","):
      m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
      if m is None:
        return None
      counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = _int(env, "SLURM_NODEID", 0)
    return (counts[node], _int(env, "SLURM_LOCALID")) if node < len(counts) else None
  return None


def local_gpu_ids(env: Mapping[str, str], gpu_count: Callable[[], int]) -> list[int] | None:
  """The GPUs (indices among the visible ones) this process drives; None leaves jax's choice."""
  tasks = _tasks_on_node(env)
  if tasks is None:
    return None
  visible = env.get("CUDA_VISIBLE_DEVICES")
  gpus = len([d for d in visible.split(",") if d.strip()]) if visible is not None else gpu_count()
  local_tasks, local_rank = tasks
  if not gpus or not local_tasks:
    return None
  if gpus < local_tasks:  # the launcher narrowed each task's CUDA_VISIBLE_DEVICES (e.g. --gpus-per-task)
    return list(range(gpus))
  share = gpus // local_tasks
  return list(range(local_rank * share, (local_rank + 1) * share))


def _cluster(name: str, env: Mapping[str, str], probes: Probes) -> dict:
  kwargs = {"cluster_detection_method": name}
  ids = local_gpu_ids(env, probes.gpu_count)
  if ids is not None:
    kwargs["local_device_ids"] = ids
  return kwargs


# ---------------------------------------------------------------------------------------------------- launchers
_RANKS = (("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
          ("SLURM_NTASKS", "SLURM_PROCID"))


def _explicit(env: Mapping[str, str], probes: Probes) -> dict | None:
  address = env.get("JAX_COORDINATOR_ADDRESS", "").strip()
  if not address:
    return None
  if not re.fullmatch(r".+:\d+", address):
    raise UserError(f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port: set it to the first process's "
                    "address and a free port, e.g. JAX_COORDINATOR_ADDRESS=10.0.0.1:8476.")
  count, index = next(((_int(env, c), _int(env, i)) for c, i in _RANKS if c in env and i in env), (None, None))
  if count is None:
    raise UserError("JAX_COORDINATOR_ADDRESS is set but not JAX_NUM_PROCESSES and JAX_PROCESS_ID: set both on "
                    "every process (the number of processes, and this process's id in 0..N-1).")
  if not 0 <= index < count:
    raise UserError(f"process id {index} is not in 0..{count - 1} (JAX_PROCESS_ID / JAX_NUM_PROCESSES): give "
                    "each process a distinct id below the number of processes.")
  kwargs = {"coordinator_address": address, "num_processes": count, "process_id": index,
            "cluster_detection_method": "deactivate"}
  ids = local_gpu_ids(env, probes.gpu_count)
  if ids is not None and "JAX_LOCAL_DEVICE_IDS" not in env:
    kwargs["local_device_ids"] = ids
  return kwargs


def _ompi(env: Mapping[str, str], probes: Probes) -> dict | None:
  if _int(env, "OMPI_COMM_WORLD_SIZE", 1) <= 1:
    return None
  if "OMPI_MCA_orte_hnp_uri" not in env:
    raise UserError("this is an Open MPI job of several ranks, but Open MPI 5 does not tell where its launcher "
                    "runs: set JAX_COORDINATOR_ADDRESS=<host of rank 0>:<free port> for every rank (e.g. "
                    "`mpirun -x JAX_COORDINATOR_ADDRESS=node0:8476 ...`); the ranks come from Open MPI.")
  return _cluster("ompi", env, probes)


def _slurm(env: Mapping[str, str], probes: Probes) -> dict | None:
  needed = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
  if not all(k in env for k in needed) or _int(env, "SLURM_NTASKS") <= 1:
    return None
  return _cluster("slurm", env, probes)


def _tpu_gke(env: Mapping[str, str], probes: Probes) -> dict | None:
  hosts = env.get("TPU_PROCESS_ADDRESSES", env.get("TPU_WORKER_HOSTNAMES"))
  if hosts is None:
    return None
  processes = len(hosts.split(",")) * _int(env, "MEGASCALE_NUM_SLICES", 1)
  if processes <= 1 or not probes.tpu_vm():
    return None
  return {"cluster_detection_method": "gketpu"}


def _tpu_gce(env: Mapping[str, str], probes: Probes) -> dict | None:
  if "TPU_SKIP_MDS_QUERY" in env or not probes.tpu_vm() or probes.gce_tpu_processes() <= 1:
    return None
  return {"cluster_detection_method": "gcetpu"}


LAUNCHERS: dict[str, Callable[[Mapping[str, str], Probes], dict | None]] = {
    "explicit": _explicit, "ompi": _ompi, "slurm": _slurm, "tpu-gke": _tpu_gke, "tpu-gce": _tpu_gce}


SINGLE_PROCESS = "VIT_ADAPT_SINGLE_PROCESS"


def detect(env: Mapping[str, str], probes: Probes) -> Launch | None:
  """The multi-process launch this environment describes, or None (one process: nothing to initialise)."""
  if env.get(SINGLE_PROCESS, "0").strip() not in ("", "0"):
    return None
  for kind, launcher in LAUNCHERS.items():
    kwargs = launcher(env, probes)
    if kwargs is not None:
      return Launch(kind, kwargs)
  return None


# ---------------------------------------------------------------------------------------------------- probes
def _tpu_vm() -> bool:
  # Set when `import jax` ran cloud_tpu_init: libtpu installed and TPU chips on the PCI bus.
  try:
    from jax._src import cloud_tpu_init  # private jax: imported late, so a jax that moved it only loses this probe
  except ImportError:
    return False
  return bool(cloud_tpu_init.running_in_cloud_tpu_vm)


def _gce_tpu_processes() -> int:
  # The metadata server's worker list x slices, as jax's GceTpuCluster counts them.
  try:
    from jax._src import clusters  # private jax, only needed on a TPU VM: imported late (see _tpu_vm)
    if not clusters.GceTpuCluster.is_env_present():
      return 1
    return int(clusters.GceTpuCluster.get_process_count())
  except Exception as e:  # noqa: BLE001 -- no metadata server (e.g. a TPU VM outside GCE): a single host
    logging.warning("TPU VM: could not read the slice's workers from the GCE metadata server (%s: %s); "
                    "running as a single host. A multi-host slice needs JAX_COORDINATOR_ADDRESS, "
                    "JAX_NUM_PROCESSES and JAX_PROCESS_ID then.", type(e).__name__, e)
    return 1


def _gpu_count() -> int:
  return len([p for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p)])


DEFAULT_PROBES = Probes(tpu_vm=_tpu_vm, gce_tpu_processes=_gce_tpu_processes, gpu_count=_gpu_count)
