"""The package's XLA CPU defaults: added to XLA_FLAGS on import, never over what the user set, opt-out by env."""

import os
import subprocess
import sys

import pytest

from vit_adapt import machine as xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_added_to_empty_flags():
  env = {}
  xla_cpu.apply_xla_cpu_defaults(env, jaxlib="0.10.2")
  for k, v in xla_cpu.XLA_CPU_DEFAULTS.items():
    assert f"--{k}={v}" in env["XLA_FLAGS"].split()


def test_user_flags_win_and_are_kept():
  user = ["--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT", "--xla_force_host_platform_device_count=4"]
  env = {"XLA_FLAGS": " ".join(user)}
  xla_cpu.apply_xla_cpu_defaults(env, jaxlib="0.10.2", defaults={**xla_cpu.XLA_CPU_DEFAULTS, "xla_cpu_enable_fast_min_max": "false"})
  flags = env["XLA_FLAGS"].split()
  assert flags == user + ["--xla_cpu_enable_fast_min_max=false"]  # kept, in order; only what they do not name
  xla_cpu.apply_xla_cpu_defaults(env, jaxlib="0.10.2", defaults={**xla_cpu.XLA_CPU_DEFAULTS, "xla_cpu_enable_fast_min_max": "false"})
  # idempotent: nothing added twice
  assert env["XLA_FLAGS"].split() == flags


def test_opt_out():
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x", xla_cpu.XLA_CPU_OPT_OUT_ENV: "0"}
  xla_cpu.apply_xla_cpu_defaults(env)
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def test_only_for_jaxlibs_that_know_the_options():
  env = {}
  xla_cpu.apply_xla_cpu_defaults(env, jaxlib="0.4.38")  # XLA would abort on an unknown option
  assert "XLA_FLAGS" not in env
  xla_cpu.apply_xla_cpu_defaults(env, jaxlib="0.10.2")
  assert "--xla_cpu_experimental_ynn_fusion_type=" in env["XLA_FLAGS"].split()


def _compiled_in_subprocess(extra_env: dict) -> tuple[str, str]:
  """XLA_FLAGS seen after `import vit_adapt`, and whether a matmul compiled to a YNNPACK fusion."""
  code = ("import os, vit_adapt, jax, jax.numpy as jnp\n"
          "x = jnp.ones((64, 64))\n"
          "hlo = jax.jit(lambda a: a @ a).lower(x).compile().as_text()\n"
          "print(os.environ.get('XLA_FLAGS', ''), '|', '__ynn_fusion' in hlo)\n")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.XLA_CPU_OPT_OUT_ENV)}
  env.update(extra_env, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  flags, onednn = out.stdout.strip().splitlines()[-1].rsplit("|", 1)
  return flags.strip(), onednn.strip()


@pytest.mark.skipif(not xla_cpu.xla_cpu_defaults_enabled({}), reason="this jaxlib gets XLA's own defaults")
def test_applied_before_the_backend_starts():
  flags, ynn = _compiled_in_subprocess({})
  assert "--xla_cpu_experimental_ynn_fusion_type=" in flags.split() and ynn == "False"
  flags, ynn = _compiled_in_subprocess({xla_cpu.XLA_CPU_OPT_OUT_ENV: "0"})
  assert flags == "" and ynn == "True"  # jaxlib's own default: YNNPACK dots
  # the user's own setting wins (YNNPACK dots although the package default turns them off)
  user = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
  flags, ynn = _compiled_in_subprocess({"XLA_FLAGS": user})
  assert flags == user and ynn == "True"
