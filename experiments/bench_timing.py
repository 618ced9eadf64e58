"""Timing for the benchmarks: interleaved rounds, best and median, time caps, errors as table cells.

A `Timer` wraps a zero-argument callable (one batch through a compiled program) and how to wait for it. Timers
that are compared are timed in interleaved rounds (one call of each per round), so a load change on a shared
machine hits all of them alike; best-of-rounds is timeit's estimator (the least-disturbed run), the median is
shown beside it. A timer stops taking part once its timed calls add up to `max_seconds` (after at least one),
so a slow program cannot eat the session. Building a timer never raises: the error becomes its cell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import statistics
import sys
import time
import traceback
from typing import Any, Callable


@dataclasses.dataclass
class Timer:
  name: str
  run: Callable[[], Any] | None = None
  sync: Callable[[Any], Any] = lambda out: out
  batch: int = 1
  times: list = dataclasses.field(default_factory=list)
  error: str = ""
  info: dict = dataclasses.field(default_factory=dict)   # e.g. gmacs, what was calibrated

  def call(self) -> float:
    t0 = time.perf_counter()
    self.sync(self.run())
    dt = time.perf_counter() - t0
    self.times.append(dt)
    return dt

  @property
  def ok(self) -> bool:
    return not self.error and bool(self.times)

  def per_s(self, how: str = "best") -> float:
    """Items (images) per second of the best or median call; nan when it has no timing."""
    if not self.ok:
      return math.nan
    t = min(self.times) if how == "best" else statistics.median(self.times)
    return self.batch / t

  def cell(self) -> str:
    """'best (median)' items/s, or the error."""
    if self.error:
      return f"error: {self.error}"
    if not self.times:
      return "not timed"
    return f"{self.per_s('best'):.1f} ({self.per_s('median'):.1f})"


def error_text(e: BaseException) -> str:
  lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
  text = f"{type(e).__name__}: {lines[0] if lines else ''}"
  return text.replace("|", "/")[:160]


class TimeLimit(Exception):
  pass


@contextlib.contextmanager
def time_limit(seconds: float | None):
  """Raises TimeLimit in the main thread after `seconds` (Unix; a compile in C++ is interrupted when it returns
  to Python). None or <= 0: no limit."""
  if not seconds or seconds <= 0 or not hasattr(signal, "SIGALRM"):
    yield
    return

  def handler(signum, frame):
    raise TimeLimit(f"over the time limit of {seconds:.0f} s")
  old = signal.signal(signal.SIGALRM, handler)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def prepare(name: str, make: Callable[[], tuple[Callable[[], Any], dict]], *, sync=lambda out: out,
            batch: int = 1, warmup: int = 2, limit_s: float | None = None) -> Timer:
  """Builds a timer: `make()` -> (zero-argument run, info dict; an info 'sync' replaces `sync`), then `warmup`
  untimed calls. Any exception
  (including going over `limit_s`) is caught, printed with its traceback, and becomes the timer's error."""
  timer = Timer(name, sync=sync, batch=batch)
  t0 = time.perf_counter()
  try:
    with time_limit(limit_s):
      timer.run, timer.info = make()
      timer.sync = timer.info.pop("sync", timer.sync)
      for _ in range(warmup):
        timer.sync(timer.run())
  except Exception as e:  # noqa: BLE001  (one failing row must not end the benchmark)
    traceback.print_exc(file=sys.stderr)
    timer.error = error_text(e)
    timer.run = None
  print(f"  built {name} in {time.perf_counter() - t0:.1f} s{' - ' + timer.error if timer.error else ''}",
        flush=True)
  return timer


def interleaved(timers: list[Timer], rounds: int, max_seconds: float, deadline: float | None = None) -> None:
  """`rounds` interleaved rounds over the timers that built; a timer drops out once its timed total reaches
  `max_seconds`; everything stops at `deadline` (time.perf_counter() value) after the first round."""
  live = [t for t in timers if t.run is not None and not t.error]
  for r in range(max(1, rounds)):
    if r > 0 and deadline is not None and time.perf_counter() > deadline:
      break
    for t in live:
      if r > 0 and sum(t.times) >= max_seconds:
        continue
      try:
        t.call()
      except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        t.error = error_text(e)
    live = [t for t in live if not t.error]


def ratio_cell(ours: Timer, theirs: Timer) -> str:
  """ours / theirs items/s, best (median); '—' when either side has no timing."""
  if not (ours.ok and theirs.ok):
    return "—"
  return f"{ours.per_s('best') / theirs.per_s('best'):.2f} ({ours.per_s('median') / theirs.per_s('median'):.2f})"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
