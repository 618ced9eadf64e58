"""Where a run's numbers go: clu writers (TensorBoard + console), `metrics.jsonl`, `config.json`, `results.json`.

Every run also writes its config as TensorBoard hyperparameters (`hparams`: one scalar per config field), so the
runs of a sweep line up in TensorBoard's HParams view (`tensorboard --logdir=SWEEP_WORKDIR`) against their
eval/train scalars."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from flax import traverse_util


class JsonlWriter(metric_writers.MetricWriter):
  """Appends `{"step": s, name: value, ...}` lines to a file: loss curves readable without TensorBoard."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step), **{k: _to_python(v) for k, v in scalars.items()}}
    with open(self._path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def write_summaries(self, step, values, metadata=None): pass
  def write_images(self, step, images): pass
  def write_videos(self, step, videos): pass
  def write_audios(self, step, audios, *, sample_rate): pass
  def write_texts(self, step, texts): pass
  def write_histograms(self, step, arrays, num_buckets=None): pass
  def write_hparams(self, hparams): pass
  def flush(self): pass
  def close(self): pass


class _ScalarWriter(metric_writers.MultiWriter):
  """Writes a vector value (e.g. MET's per-exit `stats/exit_top1`) as one scalar per element, `name/k`: TensorBoard
  and `metrics.jsonl` take scalars only, and the training loop stays unaware of which statistics are vectors."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    flat = {}
    for k, v in scalars.items():
      if np.ndim(v):
        flat.update({f"{k}/{i}": x for i, x in enumerate(np.ravel(np.asarray(v)))})
      else:
        flat[k] = v
    super().write_scalars(step, flat)


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard events + console (clu's default writer) and `metrics.jsonl`, on the first process only."""
  lead = jax.process_index() == 0
  writers = [metric_writers.create_default_writer(workdir, just_logging=not lead, asynchronous=False)]
  if lead:
    writers.append(JsonlWriter(os.path.join(workdir, "metrics.jsonl")))
  return _ScalarWriter(writers)


def hparams(config) -> dict[str, bool | int | float | str]:
  """The config flattened to TensorBoard hyperparameters: dotted field names ('optim.lr'), values that are not
  a bool, number or string (tuples such as `optim.policies`, None) as their text."""
  flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in sorted(flat.items())}


def _to_python(v):
  v = np.asarray(v)
  if v.dtype.kind in "iub":
    return int(v)
  f = float(v)
  return f if math.isfinite(f) else str(f)


def write_json(path: str, obj: Mapping[str, Any]) -> None:
  """Writes JSON atomically (first process only): a reader never sees half a file."""
  if jax.process_index() != 0:
    return
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=False, default=_to_python)
    f.write("\n")
  os.replace(tmp, path)
