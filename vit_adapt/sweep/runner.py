"""Runs a sweep's jobs as child processes over device slots, with skip/resume, failure isolation and progress.

A *job* is one child process: a single run (`python -m vit_adapt.main ...`) or a group of runs that share
frozen features (`python -m vit_adapt.shared_features ...`). Each run's status is decided from its own
directory: `results.json` present = done (skipped on a re-run); otherwise it is (re)started, and the trainer
resumes it from its latest checkpoint.

Robustness choices:
  * every child is its own process, so a crash (or an out-of-memory kill) of one run cannot stop the others;
  * children get SIGKILL when the sweep process dies (PR_SET_PDEATHSIG), so a killed sweep leaves no orphan
    writing into a run directory that the next invocation resumes;
  * each run directory is `flock`ed for the child's lifetime (the child inherits the locked descriptor), so two
    sweeps started on the same directory never train the same run twice at once;
  * the scheduler runs in the main thread (no worker threads: PDEATHSIG fires when the *thread* that forked
    the child exits).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import time
from typing import Callable, Sequence

from vit_adapt.sweep import devices as sweep_devices
from vit_adapt.sweep import state as sweep_state
from vit_adapt.sweep.grid import Run
from vit_adapt.train import workdir as workdir_lib

_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class Job:
  """One child process: `runs` (one, or a shared-feature group) and the command that trains them."""
  runs: list[Run]
  command: list[str]
  log_dir: str  # where the job's log.txt goes (the run dir, or the group's dir)
  after: "Job | None" = None  # start only once this job has finished (e.g. it builds a shared feature cache)

  @property
  def name(self) -> str:
    return self.runs[0].name if len(self.runs) == 1 else f"{self.log_dir} ({len(self.runs)} runs)"


def _package_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _preexec(parent_pid: int, cores: set[int] | None):
  def fn():
    # Die with the sweep: a SIGKILLed sweep must not leave children writing into run directories.
    try:
      ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
      pass
    if os.getppid() != parent_pid:  # the parent died between fork and prctl
      os._exit(1)
    if cores:
      os.sched_setaffinity(0, cores)
  return fn


def _try_lock(run_dir: str):
  """An open, exclusively locked file in `run_dir`, or None if another process holds the lock."""
  os.makedirs(run_dir, exist_ok=True)
  return workdir_lib.try_lock(os.path.join(run_dir, sweep_state.LOCK))


def _fmt_duration(s: float | None) -> str:
  if s is None:
    return "?"
  s = int(round(s))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _tail(path: str, n: int = 5) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 8192))
      lines = f.read().decode("utf-8", "replace").splitlines()
  except OSError:
    return ""
  return "\n".join("      " + ln for ln in lines[-n:])


class Runner:
  """Schedules jobs onto slots; see the module docstring. `run()` returns the number of failed runs."""

  def __init__(self, jobs: Sequence[Job], workdir: str, devices: sweep_devices.Devices, runs_per_device: int,
               state: sweep_state.StateFile, *, retries: int = 0, progress_every_s: float = 60.0,
               printer: Callable[[str], None] = lambda s: print(s, flush=True)):
    self.jobs = list(jobs)
    self.workdir = workdir
    self.devices = devices
    self.runs_per_device = runs_per_device
    self.slots = sweep_devices.make_slots(devices.count, runs_per_device)
    self.state = state
    self.retries = retries
    self.progress_every_s = progress_every_s
    self.print = printer
    self.durations: list[float] = []  # wall seconds of the jobs finished in this invocation
    for job in self.jobs:
      for run in job.runs:
        rec = state.add(run.name, dict(
            dir=self.run_dir(run), task=run.task, config=run.config, config_label=run.config_label, point=run.point,
            command=" ".join(job.command), log=os.path.join(job.log_dir, sweep_state.LOG), status="pending",
            device=None, slot=None, pid=None, started=None, finished=None, wall_s=None, returncode=None,
            shared_group=job.log_dir if len(job.runs) > 1 else None))
        if self.is_done(run):
          rec["status"] = "done"

  # --------------------------------------------------------------------------------------------------------
  def run_dir(self, run: Run) -> str:
    return os.path.join(self.workdir, run.name)

  def is_done(self, run: Run) -> bool:
    """Finished: its results.json is there and belongs to this run's config (the run's fingerprint); results of
    another config are not skipped over: the run starts and its trainer refuses the workdir, naming the keys."""
    if not os.path.isfile(os.path.join(self.run_dir(run), sweep_state.RESULTS)):
      return False
    try:
      config = run.load_config()
    except Exception:  # noqa: BLE001 -- a config that no longer loads: its finished results stand
      return True
    return workdir_lib.results_match(self.run_dir(run), config)

  def counts(self) -> dict:
    c = {"total": len(self.state.runs)}
    for status in ("done", "running", "failed", "pending", "busy"):
      c[status] = sum(r["status"] == status for r in self.state.runs.values())
    return c

  def eta(self, running: dict) -> float | None:
    if not self.durations:
      return None
    avg = sum(self.durations) / len(self.durations)
    now = time.time()
    pending_jobs = sum(1 for job in self.queue)
    left = pending_jobs * avg + sum(max(0.0, avg - (now - t0)) for (_, _, t0, _) in running.values())
    return left / max(1, len(self.slots))

  def progress(self, running: dict) -> None:
    c = self.counts()
    self.print(f"[sweep {time.strftime('%H:%M:%S')}] done {c['done']}/{c['total']} | running {c['running']} | "
               f"failed {c['failed']} | pending {c['pending']}"
               + (f" | busy elsewhere {c['busy']}" if c["busy"] else "")
               + f" | ETA {_fmt_duration(self.eta(running))}")
    self.state.save(c)

  # --------------------------------------------------------------------------------------------------------
  def _start(self, job: Job, slot: sweep_devices.Slot):
    """Launches `job` on `slot`; returns (Popen, lock fds, log file) or None when its runs are locked."""
    locks = []
    for run in job.runs:
      fd = _try_lock(self.run_dir(run))
      if fd is None:
        for f in locks:
          os.close(f)
        for r in job.runs:
          self.state.runs[r.name]["status"] = "busy"
        self.print(f"[sweep] {run.name}: locked by another process (another sweep on this directory?); "
                   "leaving it alone.")
        return None
      locks.append(fd)
    os.makedirs(job.log_dir, exist_ok=True)
    env = sweep_devices.child_env(self.devices, slot, self.runs_per_device)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    cores = sweep_devices.cpu_affinity(self.devices, slot, len(self.slots))
    log = open(os.path.join(job.log_dir, sweep_state.LOG), "ab")
    header = (f"\n===== sweep {time.strftime('%Y-%m-%d %H:%M:%S')} device "
              f"{env['VIT_ADAPT_SWEEP_DEVICE']} slot {slot.key}"
              + (f" cores {sorted(cores)}" if cores else "") + "\n$ " + " ".join(job.command) + "\n")
    log.write(header.encode())
    log.flush()
    proc = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, pass_fds=tuple(locks), preexec_fn=_preexec(os.getpid(), cores))
    now = time.time()
    for run in job.runs:
      rec = self.state.runs[run.name]
      rec.update(status="running", device=env["VIT_ADAPT_SWEEP_DEVICE"], slot=slot.key, pid=proc.pid,
                 started=time.strftime("%Y-%m-%d %H:%M:%S"), finished=None, wall_s=None, returncode=None)
      rec["attempts"] += 1
      rec["history"].append({"device": rec["device"], "slot": slot.key, "started": now})
    return proc, locks, log

  def _finish(self, job: Job, proc, locks, log, t0: float) -> int:
    """Records the outcome of a finished job; returns how many of its runs failed."""
    rc = proc.returncode
    log.close()
    for fd in locks:
      os.close(fd)
    wall = time.time() - t0
    self.durations.append(wall)
    failed = 0
    for run in job.runs:
      rec = self.state.runs[run.name]
      ok = self.is_done(run)
      rec.update(status="done" if ok else "failed", finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                 wall_s=round(wall, 2), returncode=rc)
      rec["history"][-1].update(returncode=rc, wall_s=round(wall, 2))
      if not ok:
        failed += 1
        why = f"exit code {rc}" if rc else "exited 0 without writing results.json"
        self.print(f"[sweep] FAILED {run.name} ({why}); log: {rec['log']}")
    return failed

  def _next_ready(self, running: dict) -> Job | None:
    """Pops the first queued job whose prerequisite (if any) is neither queued nor running."""
    busy = {id(j) for j in self.queue} | {id(v[0]) for v in running.values()}
    for i, job in enumerate(self.queue):
      if job.after is None or id(job.after) not in busy:
        return self.queue.pop(i)
    return None

  def run(self) -> int:
    self.queue = [job for job in self.jobs if not all(self.is_done(r) for r in job.runs)]
    retries_left = {id(job): self.retries for job in self.queue}
    free = list(self.slots)
    running: dict[int, tuple] = {}  # pid -> (job, slot, t0, (proc, locks, log))
    last_report = 0.0
    self.progress(running)
    try:
      while self.queue or running:
        while free:
          job = self._next_ready(running)
          if job is None:
            break
          slot = free.pop(0)
          started = self._start(job, slot)
          if started is None:
            free.insert(0, slot)
            continue
          running[started[0].pid] = (job, slot, time.time(), started)
          self.print(f"[sweep] start {job.name} on {self.devices.platform}:{slot.device} (slot {slot.key})")
          last_report = 0.0
        changed = False
        for pid, (job, slot, t0, (proc, locks, log)) in list(running.items()):
          if proc.poll() is None:
            continue
          del running[pid]
          free.append(slot)
          free.sort(key=lambda s: (s.lane, s.device))
          if self._finish(job, proc, locks, log, t0) and retries_left.get(id(job), 0) > 0:
            retries_left[id(job)] -= 1
            self.print(f"[sweep] retrying {job.name} ({retries_left[id(job)]} retries left)")
            for r in job.runs:
              self.state.runs[r.name]["status"] = "pending"
            self.queue.append(job)
          changed = True
        if changed or time.time() - last_report > self.progress_every_s:
          self.progress(running)
          last_report = time.time()
        if running:
          time.sleep(0.2)
    except KeyboardInterrupt:
      self.print("[sweep] interrupted: stopping the running jobs (re-run the same command to resume).")
      for job, _, _, (proc, locks, log) in running.values():
        proc.send_signal(signal.SIGTERM)
      for job, _, t0, (proc, locks, log) in running.values():
        try:
          proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
          proc.kill()
          proc.wait()
        log.close()
        for fd in locks:
          os.close(fd)
        for r in job.runs:
          self.state.runs[r.name]["status"] = "done" if self.is_done(r) else "pending"
      self.state.save(self.counts())
      raise
    self.progress(running)
    return self.summary()

  def summary(self) -> int:
    c = self.counts()
    failed = [(name, r) for name, r in self.state.runs.items() if r["status"] == "failed"]
    self.print(f"[sweep] finished: {c['done']}/{c['total']} runs done, {c['failed']} failed"
               + (f", {c['busy']} left to another process" if c["busy"] else "") + ".")
    if failed:
      self.print("[sweep] failed runs (log paths; re-run the command to retry them):")
      for name, r in failed:
        self.print(f"  {name}: exit {r['returncode']}, log {r['log']}\n{_tail(r['log'])}")
    return len(failed)
