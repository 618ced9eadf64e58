"""Undecodable training videos skipped (`config.video.skip_corrupt`), counted exactly once across grain worker
processes and resumed runs.

The reader turns a clip it cannot decode into a marker record {'skipped_where': name} (`marker`). Two grain
stages carry the count from there to the run's results:

  DropSkipped  per record, before batching (so in the worker process that read it): drops the markers and
               attaches to the next clip `skipped` (how many were dropped just before it) and `skipped_where`
               (their names, newline-joined). The count travels with the data: no state is shared between
               processes, and an iterator restored from a checkpoint re-reads exactly the markers after the last
               consumed clip, so none is counted twice or lost.
  SkipTally    in the main process, after the workers: pops both fields from each batch (the model never sees
               them), logs each skipped video, and keeps the total and the first `KEEP_NAMES` names in its
               iterator state, which the training checkpoint saves beside the data position: a resumed run
               continues the count of the interrupted one.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np
from absl import logging

from vit_adapt.errors import UserError

KEEP_NAMES = 10  # the first names kept for results.json; the log names every one
_COUNT, _NAMES, _MARKER = "skipped", "skipped_where", "skipped_where"


def marker(name: str) -> dict:
  """The record an undecodable training clip becomes."""
  return {_MARKER: name}


def is_marker(record: dict) -> bool:
  return _MARKER in record and "video" not in record


class DropSkipped(grain.IterDataset):
  """Records -> clips only, each with the markers dropped just before it (`skipped`, `skipped_where`).

  `limit`: more consecutive markers than this (the shard's size) means every video of the shard is undecodable;
  that is an error, not an endless search for a clip.
  """

  def __init__(self, parent: grain.IterDataset, *, limit: int, split: str):
    super().__init__(parent)
    self._limit, self._split = limit, split

  def __iter__(self) -> grain.DatasetIterator:
    return _DropSkippedIterator(self._parent.__iter__(), self._limit, self._split)


class _DropSkippedIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, limit: int, split: str):
    super().__init__(parent)
    self._limit, self._split = limit, split

  def __next__(self) -> dict:
    names = []
    while True:
      record = next(self._parent)
      if not is_marker(record):
        return {**record, _COUNT: np.int32(len(names)), _NAMES: np.str_("\n".join(names))}
      names.append(str(record[_MARKER]))
      if len(names) > self._limit:
        raise UserError(f"every video of the {self._split!r} split is undecodable (skipped {len(names)} in a row, "
                        f"e.g. {names[0]}): check config.dataset.root and the video files.")

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


class SkipTally(grain.DatasetIterator):
  """Batches with `skipped`/`skipped_where` -> batches without them; `.count` and `.names` so far (resumable)."""

  def __init__(self, parent: grain.DatasetIterator, split: str):
    super().__init__(parent)
    self.split = split
    self.count = 0
    self.names: list[str] = []

  def __next__(self) -> dict:
    batch = dict(next(self._parent))
    counts, names = batch.pop(_COUNT), batch.pop(_NAMES)
    for group in np.asarray(names)[np.asarray(counts) > 0]:
      for name in str(group).split("\n"):
        self.count += 1
        if len(self.names) < KEEP_NAMES:
          self.names.append(name)
        logging.warning("skipped undecodable training video %d of split %r: %s", self.count, self.split, name)
    return batch

  def summary(self) -> dict:
    """{'count', 'first'}: what results.json reports for the training split."""
    return {"count": self.count, "first": list(self.names)}

  def get_state(self) -> dict[str, Any]:
    return {"data": self._parent.get_state(), "skipped": self.count, "skipped_first": list(self.names)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["data"])
    self.count, self.names = int(state["skipped"]), [str(n) for n in state["skipped_first"]]
