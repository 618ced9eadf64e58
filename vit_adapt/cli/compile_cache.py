"""JAX's persistent compilation cache, on by default for training runs and sweeps.

A compiled program (the training step, the evaluation step, DyT's bucketed inference programs) is stored under
the cache directory keyed by its HLO, the jax/XLA version and the device, so a second process of the same
config (a resumed run, the next seed of a sweep, a re-run) reads it instead of compiling again. Where:

  --compilation_cache=DIR        this directory
  --compilation_cache=off        no cache
  VIT_ADAPT_COMPILATION_CACHE    the same, from the environment (a sweep passes its setting to its jobs this way)
  default                        $XDG_CACHE_HOME/vit_adapt/jax, else ~/.cache/vit_adapt/jax

Only programs that took `MIN_COMPILE_TIME_S` or longer to compile are stored: the many sub-second programs
(initialisation, small reductions) would cost a file each for no gain.
"""

from __future__ import annotations

import os

from absl import flags, logging

ENV = "VIT_ADAPT_COMPILATION_CACHE"
OFF = "off"
MIN_COMPILE_TIME_S = 1.0

FLAG_HELP = (f"Directory of JAX's persistent compilation cache, or '{OFF}'. Default: ${ENV} if set, else "
             "$XDG_CACHE_HOME/vit_adapt/jax (~/.cache/vit_adapt/jax).")


def define_flag() -> None:
  """`--compilation_cache`, for the entry points that compile (main, the sweep)."""
  if "compilation_cache" not in flags.FLAGS:
    flags.DEFINE_string("compilation_cache", None, FLAG_HELP)


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "vit_adapt", "jax")


def resolve(flag_value: str | None) -> str | None:
  """The cache directory (absolute) from the flag, else the environment, else the default; None = off."""
  value = flag_value if flag_value is not None else os.environ.get(ENV)
  if value is None:
    value = default_dir()
  if value.strip().lower() in (OFF, ""):
    return None
  return os.path.abspath(os.path.expanduser(value))


def enable(flag_value: str | None = None, *, min_compile_time_s: float = MIN_COMPILE_TIME_S) -> str | None:
  """Turns the cache on (or off) for this process and the processes it starts; logs where. -> its directory."""
  directory = resolve(flag_value)
  os.environ[ENV] = directory or OFF  # inherited by a sweep's jobs
  if directory is None:
    logging.info("Compilation cache: off")
    return None
  import jax  # here, not at the top: the entry points import this module before parsing flags (fast --help)

  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
  logging.info("Compilation cache: %s (programs compiling in %.1f s or more; --compilation_cache=off to disable)",
               directory, min_compile_time_s)
  return directory
