"""A workdir is one run: an exclusive lock while a process trains in it, the run's identity, the time it took.

Lock. `WORKDIR/.lock` is `flock`ed by the process that trains (the first process of a multi-host job); a second
`main` on the same workdir stops at once with the holder's pid, host and start time. The kernel releases a
`flock` when its holder dies, so a lock left by a crashed or killed run never blocks (its file stays, read only
for the message).

Identity. A run is its resolved config minus the fields that may change without changing what is trained and
measured (`COSMETIC`: logging, checkpoint and evaluation cadence, the efficiency measurement, data paths and
read-ahead, a method's cache directory, rematerialisation). Its fingerprint is stored in `WORKDIR/run.json` before the first
checkpoint and in `results.json`; resuming (or re-evaluating) a workdir under another fingerprint stops with exit
2, naming the keys that differ: use a new --workdir, or `--restart`, which moves the old run aside to
`WORKDIR.replaced-<UTC time>` (never deletes it) and starts afresh.

Time. `WORKDIR/run.json` also accumulates the wall time of every process that worked on the run (updated at
each log step), so `results.json` reports the whole run's time, not the last process's.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time

import jax
from flax import traverse_util

from vit_adapt import methods
from vit_adapt.errors import UserError
from vit_adapt.train import results as results_lib

LOCK_FILE = ".lock"
RUN_FILE = "run.json"
# Config fields that never change what a run trains or measures (dotted paths).
COSMETIC = ("train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
            "train.eval_every_epochs", "eval.batch_size", "efficiency.enabled", "efficiency.batch_size",
            "efficiency.repeats", "dataset.data_dir", "dataset.root", "dataset.split_lists",
            "dataset.num_threads", "dataset.prefetch", "dataset.cache_mb", "model.remat")


# ---------------------------------------------------------------------------------------------------- lock
def try_lock(path: str):
  """An open file descriptor holding an exclusive `flock` on `path`, or None if another process holds it."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EAGAIN, errno.EACCES):
      return None
    raise
  return fd


class Lock:
  """The exclusive lock of a training workdir (first process only); `release()` or process exit frees it."""

  def __init__(self, workdir: str):
    self._fd = None
    if jax.process_index() != 0:
      return
    path = os.path.join(workdir, LOCK_FILE)
    fd = try_lock(path)
    if fd is None:
      try:
        with open(path) as f:
          holder = f.read().strip() or "another process"
      except OSError:
        holder = "another process"
      raise UserError(f"the workdir {workdir} is in use by {holder}: two runs would write the same checkpoints "
                      "and logs. Wait for it to finish, or use another --workdir.")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode())
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


def check_writable(workdir: str) -> None:
  """Creates `workdir` and checks a file can be written in it, before any compute."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write in the workdir {workdir} ({e.strerror}): pass a --workdir you can write "
                    "to.") from None


# ---------------------------------------------------------------------------------------------------- identity
def identity(config) -> dict:
  """The run-defining fields of a resolved config, flat (dotted keys)."""
  return _identity_of(config.to_dict())


def _identity_of(config_dict: dict) -> dict:
  flat = {".".join(k): v for k, v in traverse_util.flatten_dict(config_dict).items()}
  drop = set(COSMETIC)
  cache = methods.get(flat["method.name"]).feature_cache if "method.name" in flat else None
  if cache is not None and cache.dir_field:  # where a method keeps its feature cache is a path, like data paths
    drop.add(f"method.{cache.dir_field}")
  return {k: _jsonable(v) for k, v in sorted(flat.items()) if k not in drop}


def fingerprint(config) -> str:
  return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(v):
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)


def recorded_identity(workdir: str) -> dict | None:
  """The identity of the run a workdir holds: `run.json`, else (workdirs from before run identities) the
  `config.json` its run wrote at start; None for a workdir that holds no run."""
  if not _holds_a_run(workdir):
    return None
  run = _read_json(os.path.join(workdir, RUN_FILE))
  if isinstance(run, dict) and "identity" in run:
    return run["identity"]
  config = _read_json(os.path.join(workdir, "config.json"))
  return _identity_of(config) if isinstance(config, dict) else None


def _holds_a_run(workdir: str) -> bool:
  """A checkpoint or results: something a resume would continue from (a run that stopped before its first
  checkpoint left nothing to protect)."""
  ckpts = os.path.join(workdir, "checkpoints")
  steps = [n for n in os.listdir(ckpts) if n.isdigit()] if os.path.isdir(ckpts) else []
  return bool(steps) or os.path.isfile(results_lib.path(workdir))


def claim(workdir: str, config, *, restart: bool) -> float:
  """Makes `workdir` this run's: checks (or, with `restart`, moves aside) a different run there, records the
  identity. -> the wall time earlier processes of this run already spent."""
  mine = identity(config)
  theirs = recorded_identity(workdir)
  if theirs is not None and _differ(theirs, mine):
    if not restart:
      raise UserError(f"the workdir {workdir} holds another run (its config differs in "
                      f"{_differences(theirs, mine)}). Resuming would mix two runs: use a new --workdir, or pass "
                      "--restart to move the old run aside (to WORKDIR.replaced-<time>) and start afresh.")
    _move_aside(workdir)
    theirs = None
  previous = 0.0 if theirs is None else float((_read_json(os.path.join(workdir, RUN_FILE)) or {}).get(
      "wall_time_s", 0.0))
  write_run_file(workdir, config, previous)
  return previous


def write_run_file(workdir: str, config, wall_time_s: float) -> None:
  if jax.process_index() != 0:
    return
  record = {"fingerprint": fingerprint(config), "wall_time_s": wall_time_s, "identity": identity(config)}
  tmp = os.path.join(workdir, RUN_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, os.path.join(workdir, RUN_FILE))


def results_match(workdir: str, config) -> bool:
  """Whether `workdir` holds the finished run of `config` (results.json of the same fingerprint; results
  written before run identities count as the run's)."""
  results = results_lib.read(workdir)
  if results is None:
    return False
  recorded = results.get("run_fingerprint")
  return recorded is None or recorded == fingerprint(config)


def _differing_keys(old: dict, new: dict) -> list[str]:
  """Fields both identities have, with different values. A field only one side has was added (or removed) by
  an upgrade of vit_adapt between the two processes: the older one ran without it, so it does not tell runs
  apart (how a model directory fills such fields: `Method.legacy`)."""
  return sorted(k for k in set(old) & set(new) if old[k] != new[k])


def _differ(old: dict, new: dict) -> bool:
  return bool(_differing_keys(old, new))


def _differences(old: dict, new: dict, most: int = 6) -> str:
  keys = _differing_keys(old, new)
  parts = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in keys[:most]]
  return ", ".join(parts) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _move_aside(workdir: str) -> None:
  if jax.process_index() != 0:
    return
  target = f"{workdir.rstrip(os.sep)}.replaced-{_now().replace(':', '')}"
  os.makedirs(target)
  for name in os.listdir(workdir):
    if name != LOCK_FILE:  # this process holds it
      shutil.move(os.path.join(workdir, name), os.path.join(target, name))
  print(f"--restart: moved the previous run of {workdir} to {target}", flush=True)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
  """Wall time of this run over all its processes: earlier processes' time plus this one's."""

  def __init__(self, previous_s: float, start: float | None = None):
    self._previous = previous_s
    self._start = time.time() if start is None else start

  def total(self) -> float:
    return self._previous + time.time() - self._start
