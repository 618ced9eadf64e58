"""The backend report of every CLI (vit_adapt/cli/backend.py) on fake machines: /proc and /dev trees under
tmp_path, a fake environment, PATH and list of installed distributions; and the real JAX (CPU) for the line
logged at the first compilation."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import pytest

from vit_adapt.cli import backend

NO_SMI = lambda name: None  # noqa: E731


def touch(root, *parts):
  path = os.path.join(root, *parts)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  open(path, "w").close()


@pytest.mark.parametrize("files,env,smi,expected", [
    ([("proc", "driver", "nvidia", "version")], {}, None, ("gpu", "/proc/driver/nvidia/version", "cuda12")),
    ([("dev", "nvidia0"), ("dev", "nvidiactl")], {}, None, ("gpu", "/dev/nvidia0", "cuda12")),
    ([], {}, "/usr/bin/nvidia-smi", ("gpu", "/usr/bin/nvidia-smi", "cuda12")),
    ([("dev", "accel0"), ("dev", "accel1")], {}, None, ("tpu", "/dev/accel0", "tpu")),
    ([("dev", "vfio", "0"), ("dev", "vfio", "vfio")], {"TPU_WORKER_ID": "0"}, None, ("tpu", "/dev/vfio/0", "tpu")),
    ([], {"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, None, ("tpu", "$TPU_ACCELERATOR_TYPE", "tpu")),
    ([], {"TPU_NAME": "my-tpu"}, None, ("tpu", "$TPU_NAME", "tpu")),
])
def test_machine_accelerator_finds_gpus_and_tpus(tmp_path, files, env, smi, expected):
  for parts in files:
    touch(tmp_path, *parts)
  acc = backend.machine_accelerator(str(tmp_path), env, lambda name: smi if name == "nvidia-smi" else None)
  assert (acc.kind, acc.evidence, acc.extra) == expected


def test_machine_accelerator_none_on_a_plain_machine(tmp_path):
  # VFIO without the TPU runtime's environment is some other passed-through device; /dev/accel/ (a directory)
  # is the kernel's generic accelerator class (e.g. NPUs), not a TPU chip.
  touch(tmp_path, "dev", "vfio", "0")
  touch(tmp_path, "dev", "accel", "accel0")
  touch(tmp_path, "proc", "cpuinfo")
  assert backend.machine_accelerator(str(tmp_path), {"PATH": "/usr/bin"}, NO_SMI) is None


def test_plugin_installed_by_distribution_name():
  assert backend.plugin_installed("gpu", ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt"])
  assert backend.plugin_installed("gpu", ["jax_cuda13_plugin"])
  assert not backend.plugin_installed("gpu", ["jax", "jaxlib", "libtpu"])
  assert backend.plugin_installed("tpu", ["jax", "libtpu"])
  assert backend.plugin_installed("tpu", ["libtpu-nightly"])
  assert not backend.plugin_installed("tpu", ["jax", "jaxlib", "jax-cuda12-plugin"])


@pytest.mark.parametrize("env,requested", [
    ({}, False), ({"JAX_PLATFORMS": "cpu"}, True), ({"JAX_PLATFORMS": "cuda,cpu"}, False),
    ({"JAX_PLATFORMS": "tpu"}, False), ({"CUDA_VISIBLE_DEVICES": ""}, True), ({"CUDA_VISIBLE_DEVICES": "-1"}, True),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, False),
])
def test_cpu_requested(env, requested):
  assert backend.cpu_requested(env) is requested


def fake_backend(platform="cpu"):
  return lambda: backend.Backend(platform=platform, device_kind="cpu" if platform == "cpu" else "NVIDIA H100",
                                 device_count=8, local_device_count=4, process_count=2)


def reporter(tmp_path, env=None, distributions=("jax", "jaxlib"), platform="cpu"):
  touch(tmp_path, "dev", "nvidia0")
  return backend.Reporter(root=str(tmp_path), environ=env or {}, which=NO_SMI, distributions=list(distributions),
                          backend=fake_backend(platform))


def warnings_of(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_gpu_machine_without_plugin_warns_at_start_with_the_install_command(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  r = reporter(tmp_path)
  r.start()
  [w] = warnings_of(caplog)
  assert "an NVIDIA GPU (/dev/nvidia0)" in w and "no GPU plugin" in w
  assert "pip install -e '.[cuda12]'" in w and "pip install -U 'jax[cuda12]'" in w
  r.on_compiled()
  assert len(warnings_of(caplog)) == 1  # said once
  assert "JAX backend: cpu (cpu), 8 devices (4 local), 2 processes" in caplog.text


def test_installed_plugin_that_falls_back_to_cpu_warns_at_first_compilation(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  r = reporter(tmp_path, distributions=("jax", "jaxlib", "jax-cuda12-plugin"))
  r.start()
  assert not warnings_of(caplog)
  r.on_compiled()
  r.on_compiled()
  [w] = warnings_of(caplog)
  assert "JAX runs on the CPU" in w and "pip install -e '.[cuda12]'" in w
  assert caplog.text.count("JAX backend:") == 1


@pytest.mark.parametrize("env,platform,distributions", [
    ({}, "gpu", ("jax-cuda12-plugin",)),  # all well
    ({"JAX_PLATFORMS": "cpu"}, "cpu", ()),  # the user asked for the CPU
])
def test_no_warning_when_jax_uses_the_gpu_or_the_cpu_was_asked_for(tmp_path, caplog, env, platform, distributions):
  caplog.set_level(logging.INFO)
  r = reporter(tmp_path, env=env, distributions=distributions, platform=platform)
  r.start()
  r.on_compiled()
  assert not warnings_of(caplog)
  assert f"JAX backend: {platform} " in caplog.text


def test_the_backend_line_comes_with_the_first_real_compilation(tmp_path, caplog):
  """The jax.monitoring listener fires when XLA compiles; the line describes the backend this test runs on."""
  caplog.set_level(logging.INFO)
  r = backend.Reporter(root=str(tmp_path), environ={}, which=NO_SMI)
  r.start()
  jax.monitoring.register_event_duration_secs_listener(r.on_event)
  try:
    assert "JAX backend:" not in caplog.text
    jax.jit(lambda x: x * 3 + 1)(jnp.arange(7.0)).block_until_ready()  # a program no other test compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(r.on_event)
  d = jax.devices()
  expected = (f"JAX backend: {d[0].platform} ({d[0].device_kind}), {len(d)} device{'' if len(d) == 1 else 's'} "
              f"({jax.local_device_count()} local), 1 process")
  assert expected in caplog.text
  assert not warnings_of(caplog)
