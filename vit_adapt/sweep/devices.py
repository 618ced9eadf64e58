"""Which accelerators a sweep has, and how a child run is pinned to one of them.

The sweep parent never initialises a JAX backend itself: on a GPU that would reserve most of the memory the
runs need. It asks a short-lived probe process (`python -c 'import jax; ...'`) for the platform and device
count, then gives every run a *slot* = (device index, position on that device) and pins the child process to
its device through the environment:

  gpu   CUDA_VISIBLE_DEVICES=<id> (ids taken from the parent's CUDA_VISIBLE_DEVICES when it is set); with
        several runs per device, XLA_PYTHON_CLIENT_MEM_FRACTION splits the memory and preallocation is off.
  tpu   TPU_VISIBLE_CHIPS=<id> with single-chip process bounds and a distinct TPU_PROCESS_PORT, the libtpu
        recipe for one process per chip (single host; on a pod slice run one sweep per host with --shard).
  cpu   `--xla_force_host_platform_device_count=N` in the parent's XLA_FLAGS defines N virtual devices; each
        child sees one CPU device (the count is forced to 1 for it) and is bound to its share of the cores
        with sched_setaffinity, so N runs do not fight over the same cores.

Every child also gets VIT_ADAPT_SWEEP_DEVICE=<platform>:<index>, which the runner records in the sweep state
and the run's log, and VIT_ADAPT_SINGLE_PROCESS=1: it never joins a multi-process job the sweep runs in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

from vit_adapt import machine
from vit_adapt.errors import UserError

_PROBE = ("import json, jax; d = jax.devices(); "
          "print(json.dumps({'platform': d[0].platform, 'count': len(d), 'kind': getattr(d[0], 'device_kind', '')}))")

_FORCE_COUNT = re.compile(r"--xla_force_host_platform_device_count=\d+")


@dataclasses.dataclass(frozen=True)
class Devices:
  platform: str  # 'cpu' | 'gpu' | 'tpu'
  count: int
  kind: str = ""


def probe(python: str = sys.executable, env: dict | None = None, timeout: float = 300.0) -> Devices:
  """Platform and device count as a fresh JAX process sees them."""
  try:
    out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                         env=env if env is not None else os.environ.copy(), check=True)
  except subprocess.CalledProcessError as e:
    raise UserError(f"could not list the JAX devices (python -c 'import jax; jax.devices()' failed):\n"
                    f"{e.stderr[-2000:]}") from None
  info = json.loads(out.stdout.strip().splitlines()[-1])
  platform = {"cuda": "gpu", "rocm": "gpu"}.get(info["platform"], info["platform"])
  count = int(info["count"])
  if platform == "tpu":
    # Processes are pinned to chips, and JAX lists cores (2 per chip on v2/v3): count the chips instead. JAX
    # runs on a TPU, so a VFIO device is one of its chips.
    acc = machine.machine_accelerator(devices_only=True, vfio_is_tpu=True)
    count = len(acc.devices) if acc and acc.kind == "tpu" else count
  return Devices(platform=platform, count=count, kind=info.get("kind", ""))


@dataclasses.dataclass(frozen=True)
class Slot:
  """Where one run executes: device `device` (0-based among the sweep's devices), position `lane` on it."""
  device: int
  lane: int

  @property
  def key(self) -> str:
    return f"{self.device}.{self.lane}"


def make_slots(num_devices: int, runs_per_device: int) -> list[Slot]:
  # Device-major interleaving: the first runs spread over all devices before any device gets a second one.
  return [Slot(d, lane) for lane in range(runs_per_device) for d in range(num_devices)]


def _visible_ids(var: str, count: int) -> list[str]:
  ids = [s.strip() for s in os.environ.get(var, "").split(",") if s.strip()]
  return ids if len(ids) >= count else [str(i) for i in range(count)]


def child_env(devices: Devices, slot: Slot, runs_per_device: int, base: dict | None = None) -> dict:
  """The environment of a child run pinned to `slot`."""
  env = dict(os.environ if base is None else base)
  env["VIT_ADAPT_SWEEP_DEVICE"] = f"{devices.platform}:{slot.device}"
  # A child is one process on one device, even when the sweep runs inside a multi-process job (one sweep per
  # host of a pod slice, per srun task): it must not join that job (vit_adapt.train.cluster.SINGLE_PROCESS).
  env["VIT_ADAPT_SINGLE_PROCESS"] = "1"
  if devices.platform == "gpu":
    env["CUDA_VISIBLE_DEVICES"] = _visible_ids("CUDA_VISIBLE_DEVICES", devices.count)[slot.device]
    if runs_per_device > 1:
      env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
      env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.95 / runs_per_device:.3f}"
  elif devices.platform == "tpu":
    env.update({
        "TPU_VISIBLE_CHIPS": _visible_ids("TPU_VISIBLE_CHIPS", devices.count)[slot.device],
        "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_PORT": str(8476 + slot.device),
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    })
  else:
    flags = _FORCE_COUNT.sub("", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=1").strip()
  return env


def cpu_affinity(devices: Devices, slot: Slot, num_slots: int) -> set[int] | None:
  """The cores a CPU run is bound to: an equal share per slot (slots share cores when there are fewer)."""
  if devices.platform != "cpu" or not hasattr(os, "sched_getaffinity"):
    return None
  cores = sorted(os.sched_getaffinity(0))
  index = slot.lane * devices.count + slot.device
  per = max(1, len(cores) // num_slots)
  start = (index * per) % len(cores)
  return {cores[(start + i) % len(cores)] for i in range(per)}
