"""Which accelerator the machine has, which backend JAX runs on, and the install command when they differ.

`pip install -e .` installs a CPU-only jax; on a GPU or TPU machine it would train on the CPU without a word.
Every CLI therefore reports in two steps:

  at start            `machine_accelerator()` (vit_adapt/machine.py) looks at the machine (device files,
                      environment, PATH; no JAX) and, when an NVIDIA GPU or a TPU is there but no JAX plugin for
                      it is installed, warns with the exact install command;
  first compilation   the backend JAX runs on is logged (platform, device kind and count, process count), with
                      the same warning when JAX fell back to the CPU although a plugin is installed.

The backend line waits for the first compilation (a `jax.monitoring` event) because initialising a JAX backend
is not free: it must come after `jax.distributed.initialize()` (multi-host runs call it first thing in the
training loop), on a GPU it reserves most of the device memory and on a TPU it locks the chips. Processes that
never compute (the sweep parent, `report`, `--help`) never initialise one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping

from absl import logging

# The probe lives below cli/: the Colab notebook imports it before absl (this package's __init__) is installed.
from vit_adapt.machine import Accelerator, machine_accelerator, plugin_installed

# jax.monitoring event recorded after every XLA compilation (and persistent-cache hit): the backend is up.
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def cpu_requested(environ: Mapping[str, str] | None = None) -> bool:
  """The user asked for the CPU (JAX_PLATFORMS without an accelerator, or every GPU hidden): no warning then."""
  env = os.environ if environ is None else environ
  platforms = env.get("JAX_PLATFORMS", env.get("JAX_PLATFORM_NAME", ""))
  if platforms and not any(p in platforms for p in ("gpu", "cuda", "rocm", "tpu")):
    return True
  return env.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1")


@dataclasses.dataclass(frozen=True)
class Backend:
  """The backend JAX runs on."""
  platform: str  # 'cpu' | 'gpu' | 'tpu'
  device_kind: str
  device_count: int  # all processes
  local_device_count: int
  process_count: int

  def describe(self) -> str:
    def n(count, noun):
      return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")
    return (f"JAX backend: {self.platform} ({self.device_kind}), {n(self.device_count, 'device')} "
            f"({self.local_device_count} local), {n(self.process_count, 'process')}")


def current_backend() -> Backend:
  """The backend JAX runs on; initialises it (see the module docstring for when that is safe)."""
  import jax  # late: only processes that compute get here, and `--help` stays fast

  devices = jax.devices()
  platform = {"cuda": "gpu", "rocm": "gpu"}.get(devices[0].platform, devices[0].platform)
  return Backend(platform=platform, device_kind=getattr(devices[0], "device_kind", "") or "unknown",
                 device_count=len(devices), local_device_count=jax.local_device_count(),
                 process_count=jax.process_count())


def missing_plugin_warning(acc: Accelerator) -> str:
  return (f"This machine has {acc.name} ({acc.evidence}) but the installed jax has no {acc.kind.upper()} "
          f"plugin: everything will run on the CPU. Install JAX for it: {acc.install_command}.")


def cpu_fallback_warning(acc: Accelerator) -> str:
  return (f"This machine has {acc.name} ({acc.evidence}) but JAX runs on the CPU (JAX's log above says why "
          f"its {acc.kind.upper()} backend did not start: often a driver or CUDA/libtpu version mismatch). "
          f"Reinstall JAX for it: {acc.install_command}.")


class Reporter:
  """The two steps of the module docstring for one process; `start()` once, `on_compiled()` per compilation."""

  def __init__(self, root: str = "/", environ: Mapping[str, str] | None = None,
               which: Callable[[str], str | None] = shutil.which,
               distributions: Iterable[str] | None = None,
               backend: Callable[[], Backend] = current_backend):
    self._root, self._environ, self._which = root, environ, which
    self._distributions = distributions
    self._backend = backend
    self._accelerator: Accelerator | None = None
    self._warned = False
    self._logged = False
    self._lock = threading.Lock()

  def start(self) -> None:
    self._accelerator = machine_accelerator(self._root, self._environ, self._which)
    if self._accelerator is None or cpu_requested(self._environ):
      return
    if not plugin_installed(self._accelerator.kind, self._distributions):
      logging.warning("%s", missing_plugin_warning(self._accelerator))
      self._warned = True

  def on_compiled(self) -> None:
    with self._lock:  # compilations may run on several threads
      if self._logged:
        return
      self._logged = True
    backend = self._backend()
    logging.info("%s", backend.describe())
    acc = self._accelerator
    if acc is not None and backend.platform == "cpu" and not self._warned and not cpu_requested(self._environ):
      logging.warning("%s", cpu_fallback_warning(acc))
      self._warned = True

  def on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _COMPILE_EVENT and not self._logged:
      self.on_compiled()


_reporter: Reporter | None = None


def report_backend() -> None:
  """Called once by every CLI at start: the machine check now, the backend line at the first compilation."""
  global _reporter
  if _reporter is not None:
    return
  import jax.monitoring  # late: keeps `--help` fast; importing jax does not start a backend

  _reporter = Reporter()
  _reporter.start()
  jax.monitoring.register_event_duration_secs_listener(_reporter.on_event)
