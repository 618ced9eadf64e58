"""The sweep's record on disk: one JSON file in the sweep workdir, rewritten atomically on every change.

It lists every run with its directory, command, status (`pending` | `running` | `done` | `failed` | `busy`),
the device it ran on, attempts, wall time, exit code and log path, so a person (or a dashboard) can see where
a sweep stands without parsing logs, and so a re-run keeps the attempt history.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from vit_adapt.train import results as results_lib

RESULTS = results_lib.RESULTS_FILE  # a run is done when its trainer wrote this file
LOG = "log.txt"
LOCK = ".sweep.lock"
STATE_VERSION = 1


def state_path(workdir: str, shard: tuple[int, int] = (0, 1)) -> str:
  i, n = shard
  return os.path.join(workdir, "sweep_state.json" if n == 1 else f"sweep_state.shard{i}of{n}.json")


def write_json_atomic(path: str, obj: Any) -> None:
  """Write to a temporary file in the same directory, then rename: readers never see a half-written file."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp_", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=1, sort_keys=False, default=str)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def load(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return {}


class StateFile:
  """In-memory run records + a `save()` that persists them."""

  def __init__(self, path: str, header: dict):
    self.path = path
    previous = load(path).get("runs", {})
    self.header = dict(header, version=STATE_VERSION, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    self.runs: dict[str, dict] = {}
    self._previous = previous if isinstance(previous, dict) else {}

  def add(self, name: str, record: dict) -> dict:
    prev = self._previous.get(name, {})
    rec = dict(record, attempts=int(prev.get("attempts", 0)), history=list(prev.get("history", [])))
    self.runs[name] = rec
    return rec

  def save(self, summary: dict | None = None) -> None:
    write_json_atomic(self.path, dict(self.header, updated=time.strftime("%Y-%m-%d %H:%M:%S"),
                                      summary=summary or {}, runs=self.runs))
