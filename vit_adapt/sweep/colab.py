"""What experiments/colab_vtab.ipynb decides and runs: the runtime, the pip command, the data folder, the sweep.

The notebook imports this module from a fresh clone *before* vit_adapt is installed, so it uses the standard
library only (and `vit_adapt.errors` and `vit_adapt.machine`, which do too; not `vit_adapt.cli`, which needs absl).
It never imports jax: a TPU can be opened by one process only, and on a GPU jax would reserve the memory the
training processes need.

  detect_runtime()   which accelerator the machine has (device files), whatever jax is installed
  install_plan()     the pip command: keep Colab's preinstalled jax when it already drives that accelerator
                     (a constraints file pins it), else the project's `tpu` / `cuda12` extra
  check_backend()    after the install: an accelerator that jax does not see is an error with the exact fix,
                     never a silent fall-back to the CPU
  data_plan()        a Drive folder is used in place; a gs:// folder is synced to a local disk and back
  sweep_command()    the `python -m vit_adapt.sweep` command line (the 19-task one includes the data dir)
  stream()           runs a command and prints its output line by line as it comes, plus the new lines of the
                     sweep's per-run logs
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
from importlib import metadata
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from typing import Callable, Iterable, Mapping

from vit_adapt import machine
from vit_adapt.errors import UserError

# The distributions that make up an installed jax; all of them are pinned when the preinstalled jax is kept.
JAX_DISTS = ("jax", "jaxlib", "libtpu", "libtpu-nightly", "jax-cuda12-plugin", "jax-cuda12-pjrt",
             "jax-cuda13-plugin", "jax-cuda13-pjrt")
CONSTRAINTS = "/tmp/vit_adapt_keep_jax.txt"
COLAB_CLONE = "/content/vit_adapt"
COLAB_DATA = "/content/tensorflow_datasets"


# ------------------------------------------------------------------------------------------------ runtime
@dataclasses.dataclass(frozen=True)
class Runtime:
  platform: str  # 'tpu' | 'gpu' | 'cpu': the accelerator the machine has, not what jax sees
  evidence: str  # what was found, for the printed line
  warning: str = ""

  def describe(self) -> str:
    return f"runtime: {self.platform.upper()} ({self.evidence})" + (f"\nwarning: {self.warning}" if self.warning
                                                                    else "")


def detect_runtime(env: Mapping[str, str] | None = None,
                   glob_fn: Callable[[str], list[str]] = glob.glob) -> Runtime:
  """The machine's accelerator from its device files (TPU VM chips, NVIDIA GPUs); jax is not asked.

  Device files only: Colab's CPU runtimes ship nvidia-smi, and on a Colab VM a VFIO device is its TPU (v5e and
  later) even without the TPU runtime's environment."""
  env = os.environ if env is None else env
  acc = machine.machine_accelerator(environ=env, glob_fn=glob_fn, devices_only=True, vfio_is_tpu=True)
  if acc:
    what = {"tpu": "TPU chip(s)", "gpu": "NVIDIA GPU(s)"}[acc.kind]
    return Runtime(acc.kind, f"{len(acc.devices)} {what}: {', '.join(acc.devices)}")
  if env.get("COLAB_TPU_ADDR"):
    # The legacy "TPU Node" runtime: the TPU is on another host, reached over gRPC, which jax dropped.
    return Runtime("cpu", f"COLAB_TPU_ADDR={env['COLAB_TPU_ADDR']} but no local TPU chip",
                   warning="this is Colab's legacy TPU Node runtime, which current jax cannot use; choose a TPU VM "
                           "runtime (Runtime > Change runtime type > v2-8 / v5e-1 / v6e-1 TPU)")
  return Runtime("cpu", "no /dev/accel*, /dev/vfio/<n> or /dev/nvidia<n>")


# ------------------------------------------------------------------------------------------------ versions
def installed_versions(names: Iterable[str] = JAX_DISTS + ("tensorflow", "tensorflow-cpu", "vit_adapt"),
                       ) -> dict[str, str]:
  """distribution name -> installed version, for those of `names` that are installed."""
  out = {}
  for name in names:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def release(version: str) -> tuple[int, ...]:
  """'0.4.33+cuda12' -> (0, 4, 33): the numeric release, enough to compare against a lower bound."""
  m = re.match(r"\d+(\.\d+)*", version.strip())
  return tuple(int(x) for x in m.group(0).split(".")) if m else ()


def at_least(version: str, minimum: str | None) -> bool:
  if not minimum:
    return True
  a, b = release(version), release(minimum)
  width = max(len(a), len(b))
  return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


@dataclasses.dataclass(frozen=True)
class Project:
  """What the install needs from a checkout's pyproject.toml."""
  extras: frozenset[str] = frozenset()
  minimums: Mapping[str, str] = dataclasses.field(default_factory=dict)  # dist -> lower bound ('>=')
  urls: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def repo_url(self) -> str:
    """The repository URL from `[project.urls]` (Repository, Source or Homepage), '' when not set."""
    lower = {k.lower(): v for k, v in self.urls.items()}
    return next((lower[k] for k in ("repository", "source", "homepage") if lower.get(k)), "")


def read_project(repo_dir: str) -> Project:
  path = os.path.join(repo_dir, "pyproject.toml")
  try:
    with open(path, "rb") as f:
      project = tomllib.load(f).get("project", {})
  except (OSError, tomllib.TOMLDecodeError) as e:
    raise UserError(f"cannot read {path} ({e}); is {repo_dir} a vit_adapt checkout?") from None
  minimums = {}
  for dep in project.get("dependencies", []):
    m = re.match(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*([^;]*)", dep)
    low = re.search(r">=\s*([0-9][^,\s]*)", m.group(2)) if m else None
    if low:
      minimums[m.group(1).lower().replace("_", "-")] = low.group(1)
  return Project(extras=frozenset(project.get("optional-dependencies", {})), minimums=minimums,
                 urls=dict(project.get("urls", {})))


# ------------------------------------------------------------------------------------------------ install
def backend_installed(platform: str, installed: Mapping[str, str]) -> bool:
  """Whether the installed jax has the backend of `platform` (cpu: always)."""
  if platform == "cpu" or machine.plugin_installed(platform, installed):
    return "jax" in installed
  # Old-style GPU wheels carry CUDA in jaxlib itself ('0.4.26+cuda12.cudnn89').
  return platform == "gpu" and "jax" in installed and "+cuda" in installed.get("jaxlib", "")


def extra_command(platform: str, repo_dir: str, project: Project, python: str = sys.executable) -> list[str]:
  """The pip command that installs vit_adapt with the jax of `platform` (what to run when jax lacks it)."""
  return machine.pip_install(platform, repo_dir, (python, "-m", "pip"), project.extras, project.minimums.get("jax"))


@dataclasses.dataclass(frozen=True)
class InstallPlan:
  command: list[str]
  reason: str
  pins: Mapping[str, str] = dataclasses.field(default_factory=dict)  # written to `constraints` when not empty
  constraints: str = ""

  def describe(self) -> str:
    return f"install: {self.reason}\n  $ {shlex.join(self.command)}"

  def constraints_text(self) -> str:
    return "".join(f"{name}=={version}\n" for name, version in sorted(self.pins.items()))


def install_plan(runtime: Runtime, installed: Mapping[str, str], project: Project, repo_dir: str,
                 python: str = sys.executable, constraints: str = CONSTRAINTS) -> InstallPlan:
  """Keep the preinstalled jax when it drives this runtime's accelerator and is new enough; else the extra.

  Keeping it matters on Colab: its jax is built for the runtime's TPU or GPU, and an unconstrained
  `pip install -e .` may replace it with the CPU jax from PyPI, after which everything "works" on the CPU.
  """
  jax = installed.get("jax")
  jax_min = project.minimums.get("jax")
  if jax and backend_installed(runtime.platform, installed) and at_least(jax, jax_min):
    pins = {d: installed[d] for d in JAX_DISTS if d in installed}
    tf, tf_min = installed.get("tensorflow"), project.minimums.get("tensorflow-cpu")
    if tf and tf_min and "tensorflow-cpu" not in installed and at_least(tf, tf_min):
      # tensorflow-cpu installs the same `tensorflow` package as the preinstalled tensorflow: the same version
      # overwrites it with identical files instead of mixing two releases in one directory.
      pins["tensorflow-cpu"] = tf
    return InstallPlan(
        command=[python, "-m", "pip", "install", "-c", constraints, "-e", repo_dir],
        reason=f"keeps the preinstalled jax {jax} ({runtime.platform} backend; pinned: "
               f"{', '.join(f'{k}=={v}' for k, v in sorted(pins.items()))})",
        pins=pins, constraints=constraints)
  if not jax:
    why = "jax is not installed"
  elif not backend_installed(runtime.platform, installed):
    why = f"the installed jax {jax} has no {runtime.platform} backend"
  else:
    why = f"the installed jax {jax} is older than the required {jax_min}"
  extra = machine.EXTRAS.get(runtime.platform)
  what = f"the '{extra}' extra" if extra else "the CPU jax"
  return InstallPlan(command=extra_command(runtime.platform, repo_dir, project, python),
                     reason=f"{why}: installs vit_adapt with {what}")


def write_constraints(plan: InstallPlan) -> None:
  if plan.pins:
    with open(plan.constraints, "w") as f:
      f.write(plan.constraints_text())


def check_backend(runtime: Runtime, jax_platform: str, repo_dir: str, project: Project,
                  python: str = sys.executable) -> None:
  """Raises when the machine has an accelerator but jax runs on the CPU, with the command that fixes it."""
  if runtime.platform == "cpu" or jax_platform == runtime.platform:
    return
  raise UserError(
      f"this runtime has a {runtime.platform.upper()} ({runtime.evidence}) but jax runs on {jax_platform}: the "
      f"installed jax has no {runtime.platform} backend. Install it with\n  "
      f"{shlex.join(extra_command(runtime.platform, repo_dir, project, python))}\n"
      "then restart the session (Runtime > Restart session) and run the notebook again.")


# ------------------------------------------------------------------------------------------------ data
@dataclasses.dataclass(frozen=True)
class DataPlan:
  data_dir: str                  # what training reads (config.dataset.data_dir)
  store: str                     # where the prepared data persists between sessions
  mount_drive: bool = False      # data_dir is on Google Drive: mount it first
  fetch: list[str] | None = None    # store -> data_dir, before preparing (what an earlier session prepared)
  publish: list[str] | None = None  # data_dir -> store, after preparing


def data_plan(folder: str, local: str = COLAB_DATA) -> DataPlan:
  """A Drive (or any local) folder is prepared into and read in place; a gs:// folder is mirrored to `local`.

  The trainer reads a local file system (tfds ArrayRecord files through `os` paths), so a bucket is synced down
  before preparing (only the missing tasks are then downloaded) and the result synced back up.
  """
  folder = folder.rstrip("/")
  if not folder:
    raise UserError("the data folder (DATA_DIR) is empty: give a Google Drive folder (/content/drive/MyDrive/...), "
                    "a gs:// folder or a local directory.")
  if folder.startswith("gs://"):
    return DataPlan(data_dir=local, store=folder, fetch=["gsutil", "-m", "rsync", "-r", folder, local],
                    publish=["gsutil", "-m", "rsync", "-r", local, folder])
  if "://" in folder:
    raise UserError(f"data folder {folder!r}: only gs:// buckets, Google Drive or local directories are supported.")
  return DataPlan(data_dir=folder, store=folder, mount_drive=folder.startswith("/content/drive/"))


# ------------------------------------------------------------------------------------------------ commands
def config_flags(overrides: Mapping[str, object]) -> list[str]:
  """{'train.steps': 3} -> ['--config.train.steps=3'] (the trainer's flags)."""
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def sweep_command(configs: Iterable[str], tasks: Iterable[str] | str, seeds: Iterable[int], workdir: str,
                  overrides: Mapping[str, object], python: str = sys.executable,
                  progress_every_s: float = 30) -> list[str]:
  """The `python -m vit_adapt.sweep` command: configs x tasks x seeds, `overrides` on every run."""
  tasks = tasks if isinstance(tasks, str) else ",".join(tasks)
  if not tasks:
    raise UserError("no task to run: none of the chosen tasks is prepared (see the preparation output above).")
  cmd = [python, "-m", "vit_adapt.sweep", *(f"--config={c}" for c in configs), f"--tasks={tasks}",
         f"--grid=seed=[{','.join(str(s) for s in seeds)}]"]
  if overrides:
    cmd.append("--overrides=" + ";".join(f"{k}={v}" for k, v in overrides.items()))
  return cmd + [f"--workdir={workdir}", f"--progress_every_s={progress_every_s:g}"]


# ------------------------------------------------------------------------------------------------ stream
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)")


def _split(buffer: str) -> tuple[list[str], str]:
  """Complete lines (with their ending; a lone '\\r' ends a progress-bar update) and the unfinished rest."""
  if buffer.endswith("\r"):  # maybe the first half of '\r\n': wait for the next chunk
    lines, rest = _split(buffer[:-1])
    return lines, rest + "\r"
  lines = _LINE.findall(buffer)
  return lines, buffer[sum(len(x) for x in lines):]


class _Follower:
  """New lines of the files matching `pattern` (the sweep's run logs), prefixed with their directory."""

  def __init__(self, pattern: str):
    self.pattern = pattern
    self.root = pattern.split("*", 1)[0]
    # Logs of earlier invocations are history: only what is appended from now on is shown.
    self.offsets = {p: os.path.getsize(p) for p in glob.glob(pattern, recursive=True)}
    self.partial: dict[str, str] = {}

  def poll(self) -> list[str]:
    out = []
    for path in sorted(glob.glob(self.pattern, recursive=True)):
      try:
        size = os.path.getsize(path)
        start = self.offsets.get(path, 0)
        if size < start:  # rewritten by a restarted run
          start, self.partial[path] = 0, ""
        if size == start:
          continue
        with open(path, "rb") as f:
          f.seek(start)
          data = f.read(size - start)
      except OSError:
        continue
      self.offsets[path] = start + len(data)
      lines, self.partial[path] = _split(self.partial.get(path, "") + data.decode("utf-8", "replace"))
      name = os.path.relpath(os.path.dirname(path), self.root) if self.root else os.path.dirname(path)
      out.extend(f"[{name}] {ln.rstrip()}\n" for ln in lines if ln.strip())
    return out


def stream(argv: list[str], *, check: bool = True, follow: str | None = None, env: Mapping[str, str] | None = None,
           write: Callable[[str], object] | None = None, poll_s: float = 1.0) -> subprocess.CompletedProcess:
  """Runs `argv`, writing its output (stdout and stderr) line by line as it comes, and the new lines of the files
  matching the glob `follow`. Returns the CompletedProcess (stdout = the command's output); raises when the
  command fails and `check`. Interrupting (the notebook's stop button) passes SIGINT on to the command."""
  write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
  write(f"$ {shlex.join(argv)}\n")
  # Python children block-buffer a piped stdout: unbuffered, their lines arrive as they are printed.
  child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
  proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env)
  follower = _Follower(follow) if follow else None
  sel = selectors.DefaultSelector()
  sel.register(proc.stdout, selectors.EVENT_READ)
  decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode  # a character may span two reads
  output, rest, last_poll, eof = [], "", 0.0, False
  try:
    while not eof:
      if sel.select(timeout=poll_s):
        chunk = os.read(proc.stdout.fileno(), 65536)
        eof = not chunk
        lines, rest = _split(rest + decode(chunk, final=eof))
        for ln in lines:
          output.append(ln)
          write(ln)
      if follower and time.monotonic() - last_poll >= poll_s:
        last_poll = time.monotonic()
        for ln in follower.poll():
          write(ln)
  except KeyboardInterrupt:
    proc.send_signal(signal.SIGINT)  # the sweep stops its runs cleanly; re-running the cell resumes
    proc.wait()
    raise
  finally:
    sel.close()
    proc.stdout.close()
  if rest.strip():  # a last line without its newline
    output.append(rest)
    write(rest.rstrip("\r") + "\n")
  if follower:
    for ln in follower.poll():
      write(ln)
  returncode = proc.wait()
  text = "".join(output)
  if check and returncode:
    tail = "".join(output[-30:])
    raise UserError(f"command failed with exit code {returncode}: {shlex.join(argv)}\n{tail}")
  return subprocess.CompletedProcess(argv, returncode, stdout=text)
