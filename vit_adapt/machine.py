"""Which accelerator this machine has and how to install JAX for it, found without JAX (standard library only).

Two callers: every CLI (`cli/backend.py`: warns when a GPU/TPU is there but JAX does not use it) and the Colab
notebook (`sweep/colab.py`: picks the pip command), which imports this module from a fresh clone before
vit_adapt's dependencies are installed. Hence the standard library only, and a module of its own: importing
anything under `vit_adapt.cli` runs `cli/__init__.py`, which needs absl.

  machine_accelerator()   the NVIDIA GPU or TPU from device files, environment and PATH
  plugin_installed()      whether a JAX plugin for it is installed (by distribution name; no import)
  pip_install()           the pip command that installs vit_adapt with the JAX of an accelerator
  apply_xla_cpu_defaults() the package's XLA CPU compiler options, into XLA_FLAGS before JAX starts (below)
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import os
import shlex
import shutil
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

# Accelerator kind -> the extra of pyproject.toml that installs JAX for it; jax has an extra of the same name,
# named instead when a checkout's pyproject lacks ours (pip would only warn, and install a CPU jax).
EXTRAS = {"gpu": "cuda12", "tpu": "tpu"}
# JAX's plugin distributions per accelerator kind (name prefixes, normalised to '-').
_PLUGINS = {"gpu": ("jax-cuda", "jaxlib-cuda"), "tpu": ("libtpu",)}
_NAMES = {"gpu": "an NVIDIA GPU", "tpu": "a TPU"}
# Device files, one per chip / GPU. /dev/accel<N>: TPU v2-v4 chips. /dev/vfio/<N>: v5e and later, but VFIO also
# passes other PCI devices through, so it only counts with the TPU runtime's environment (or `vfio_is_tpu`).
_TPU_ACCEL = ("dev", "accel[0-9]*")
_TPU_VFIO = ("dev", "vfio", "[0-9]*")
_NVIDIA = ("dev", "nvidia[0-9]*")


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """An accelerator seen on the machine without JAX."""
  kind: str  # 'gpu' | 'tpu'
  evidence: str  # what showed it: a device file, an environment variable, a program on PATH
  devices: tuple[str, ...] = ()  # its device files (one per chip / GPU); empty when only a weaker sign showed it

  @property
  def extra(self) -> str:
    return EXTRAS[self.kind]

  @property
  def name(self) -> str:
    return _NAMES[self.kind]

  @property
  def install_command(self) -> str:
    """For messages to a user in a shell."""
    return (f"{shlex.join(pip_install(self.kind, '.'))} (in the vit_adapt checkout), "
            f"or {shlex.join(['pip', 'install', '-U', jax_requirement(self.kind)])}")


def machine_accelerator(root: str = "/", environ: Mapping[str, str] | None = None,
                        which: Callable[[str], str | None] = shutil.which, *,
                        glob_fn: Callable[[str], list[str]] = glob.glob,
                        devices_only: bool = False, vfio_is_tpu: bool = False) -> Accelerator | None:
  """The NVIDIA GPU or TPU of this machine, from its device files, environment and PATH; None if neither.

  TPU chips come first; then, unless `devices_only`, TPU_ACCELERATOR_TYPE / TPU_NAME; NVIDIA GPUs (with
  `devices_only` their device files only: a machine image may ship nvidia-smi without a GPU, as Colab's does);
  last nvidia-smi on PATH. `vfio_is_tpu`: the caller knows a VFIO device is the TPU (a Colab TPU VM) even without
  the TPU runtime's environment.
  `root`, `environ`, `which` and `glob_fn` are injectable so tests can fake a machine.
  """
  env = os.environ if environ is None else environ

  def files(parts):
    return tuple(sorted(p.removeprefix(root.rstrip("/")) for p in glob_fn(os.path.join(root, *parts))))

  tpu_env = sorted(k for k in ("TPU_ACCELERATOR_TYPE", "TPU_NAME") if env.get(k))
  chips = files(_TPU_ACCEL)
  if not chips and (vfio_is_tpu or any(k.startswith("TPU_") for k in env)):
    chips = files(_TPU_VFIO)
  if chips:
    return Accelerator("tpu", chips[0], chips)
  gpus = files(_NVIDIA)
  if devices_only:
    return Accelerator("gpu", gpus[0], gpus) if gpus else None
  if tpu_env:
    return Accelerator("tpu", f"${tpu_env[0]}")
  driver = files(("proc", "driver", "nvidia", "version"))
  if driver or gpus:
    return Accelerator("gpu", (driver + gpus)[0], gpus)
  smi = which("nvidia-smi")
  return Accelerator("gpu", smi) if smi else None


def plugin_installed(kind: str, distributions: Iterable[str] | None = None) -> bool:
  """Whether a JAX plugin for `kind` ('gpu' | 'tpu') is installed (by distribution name; no import)."""
  if distributions is None:
    distributions = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
  names = {n.lower().replace("_", "-") for n in distributions}
  return any(n.startswith(_PLUGINS[kind]) for n in names)


def jax_requirement(kind: str, minimum: str | None = None) -> str:
  """jax's own extra for `kind`: 'jax[cuda12]>=0.5'."""
  return f"jax[{EXTRAS[kind]}]" + (f">={minimum}" if minimum else "")


def pip_install(kind: str, repo_dir: str, pip: Sequence[str] = ("pip",), extras: Collection[str] | None = None,
                jax_min: str | None = None) -> list[str]:
  """The pip command that installs the vit_adapt checkout `repo_dir` with the JAX of `kind` ('gpu' | 'tpu';
  anything else: the CPU jax). `extras`: those the checkout's pyproject defines (None: ours, all of them); when
  it lacks the one of `kind`, jax's own extra is installed beside it, at least `jax_min`."""
  cmd = [*pip, "install", "-e"]
  extra = EXTRAS.get(kind)
  if not extra:
    return cmd + [repo_dir]
  if extras is None or extra in extras:
    return cmd + [f"{repo_dir}[{extra}]"]
  return cmd + [repo_dir, jax_requirement(kind, jax_min)]

# ------------------------------------------------------------------------------------------------------------
# XLA CPU compiler options the package sets by default, before JAX starts its CPU backend.
#
# XLA reads `XLA_FLAGS` once, when the first backend is created; `vit_adapt/__init__.py` calls
# `apply_xla_cpu_defaults()` on import,
# so every entry point (and any program that imports vit_adapt before running JAX computations) gets them. Each
# option is added only when `XLA_FLAGS` does not name that option already: what the user sets wins. Set
# `VIT_ADAPT_XLA_CPU_DEFAULTS=0` to add none. They only change how XLA compiles for the CPU; GPU/TPU programs are
# unaffected. XLA aborts on an option it does not know, and these are experimental options of recent jaxlibs: they
# are added only for the jaxlib releases they were measured on (`XLA_CPU_JAXLIBS`); others get XLA's own defaults.
#
# Why (experiments/profile_cpu.py: ViT-B/16 float32 batch 8 on the project's 2-core CPU, one process, the variants
# compiled from the same lowered program and timed in interleaved rounds): with YNNPACK's dot fusions switched off,
# XLA's own (Eigen) matmuls ran the dense forward 1.07-1.12x, DyT `threshold` 1.07-1.11x and Sparse-Tuning
# 1.07-1.09x (median - best) faster than jaxlib 0.10's default; the logits move by ~2e-6 (summation order), inside
# every parity test's tolerance. Not used: YNNPACK's elementwise fusion (0.72x), and oneDNN dot fusions
# (`xla_cpu_experimental_onednn_fusion_type`: 1.12x on the dense forward, but its compile aborts the process,
# "partition compile failed", on DyT's program).

XLA_CPU_OPT_OUT_ENV = "VIT_ADAPT_XLA_CPU_DEFAULTS"
# option -> value, in XLA_FLAGS syntax.
XLA_CPU_DEFAULTS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "",  # no YNNPACK fusions: dots through XLA's Eigen kernels
}

# jaxlib release prefixes that know every option above (checked: `strings libjax_common.so | grep xla_cpu_`).
XLA_CPU_JAXLIBS = ("0.10.",)


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def _named(flags: str) -> set[str]:
  """Option names an XLA_FLAGS string sets (`--name=value` or `--name`)."""
  return {f.lstrip("-").split("=", 1)[0] for f in flags.split() if f.startswith("--")}


def xla_flags_with_defaults(flags: str, defaults: dict[str, str] | None = None) -> str:
  """`flags` plus every default option it does not name itself."""
  named = _named(flags)
  extra = [f"--{k}={v}" for k, v in (XLA_CPU_DEFAULTS if defaults is None else defaults).items() if k not in named]
  return " ".join([flags.strip()] + extra if flags.strip() else extra)


def xla_cpu_defaults_enabled(environ=os.environ, jaxlib: str | None = None) -> bool:
  """Not opted out, and a jaxlib that knows the options."""
  jaxlib = _jaxlib_version() if jaxlib is None else jaxlib
  opted_out = environ.get(XLA_CPU_OPT_OUT_ENV, "1").strip().lower() in ("0", "false", "no", "off")
  return not opted_out and jaxlib.startswith(XLA_CPU_JAXLIBS)


def apply_xla_cpu_defaults(environ=os.environ, jaxlib: str | None = None,
                           defaults: dict[str, str] | None = None) -> None:
  """Adds the defaults to `environ['XLA_FLAGS']` (unless opted out, or another jaxlib). Has effect only before
  JAX's first backend."""
  if xla_cpu_defaults_enabled(environ, jaxlib):
    environ["XLA_FLAGS"] = xla_flags_with_defaults(environ.get("XLA_FLAGS", ""), defaults)
