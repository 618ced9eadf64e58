"""The clip pipelines of the video task: grain over a video dataset's source, PyAV decoding in grain's readers.

  train_iterator(config, seed=...)  infinite, shuffled (reshuffled each epoch), per-host sharded, checkpointable
                                    iterator of {'video': float32 (b, T, S, S, 3), 'label': int32 (b,)}
  eval_batches(config, split)       finite, deterministic batches {'video': float32 (b, V, T, S, S, 3), 'label',
                                    'mask', 'skipped'}: V = temporal x spatial test views of each video (temporal
                                    major), padded to a static batch; the model averages its logits over V
  num_examples(config, split)       videos in the split
  class_names(config)               the dataset's class names ('' when the layout has none)

Per-record work (frame count, sampling, decoding only the frames needed, spatial augmentation, normalisation)
runs in grain's reader threads (`config.dataset.num_threads`; FFmpeg and PIL release the GIL), or in
`config.video.num_workers` processes. Random choices use the generator grain derives from the seed and the
record's position, so a restored iterator state continues exactly as the uninterrupted run.

A video that cannot be decoded is a UserError naming the file; with `config.video.skip_corrupt` it is skipped
instead, never replaced by another video: a training clip is dropped and counted (`skips.py`: exactly once
across worker processes and resumes; the training iterator's `summary()`), an evaluation video counts as
`skipped` (its slot masked out; its name in the batch's host-only `skipped_where`), and the run's results
report both splits (`skipped_videos`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import grain
import ml_collections
import numpy as np
from absl import logging

from vit_adapt.data import datasets, images
from vit_adapt.data import pipeline as image_pipeline
from vit_adapt.data.video import augment, decode, demo, layouts, sampling, skips
from vit_adapt.data.video.demo import MovingDigitsSource
from vit_adapt.errors import UserError


class VideoFileSource:
  """Random access to a split's videos: {'path', 'label', 'where'}."""

  def __init__(self, listing: layouts.VideoList):
    self.listing = listing

  def __len__(self) -> int:
    return len(self.listing.items)

  def __getitem__(self, index: int) -> dict:
    path, label, where = self.listing.items[index]
    return {"path": path, "label": label, "where": where}


def _files(task: datasets.Dataset, split: str, config) -> tuple:
  listing = layouts.read(task.layout, config.dataset.get("root", ""), split)
  return VideoFileSource(listing), listing.class_names


def _moving_digits(task, split, config):
  return MovingDigitsSource(split), demo.class_names()


# Dataset.layout -> (task, split, config) -> (source, class names)
SOURCES: dict[str, Callable] = {"k400_list": _files, "ssv2_json": _files, "moving_digits": _moving_digits}


def open_source(config: ml_collections.ConfigDict, split: str):
  """-> (dataset, source, class names) of `split` of config.dataset.name."""
  task = datasets.get_dataset(config.dataset.name)
  task.check_split(split)
  if task.layout not in SOURCES:
    raise UserError(f"dataset {task.name!r} is not a video dataset (layout {task.layout!r}); video layouts: "
                    f"{', '.join(SOURCES)}.")
  source, names = SOURCES[task.layout](task, split, config)
  return task, source, names


# -------------------------------------------------------------------------------------------------------------
# Records.

def _frames(record: dict, choose: Callable[[int], list]) -> tuple[np.ndarray, list]:
  """Reads the frames `choose(frame_count)` names (a flat list of indices) -> (frames, indices)."""
  if "frames" in record:  # an embedded clip
    n = len(record["frames"])
    idx = choose(n)
    return record["frames"][np.asarray(idx, np.int64)], idx
  n = decode.frame_count(record["path"])
  idx = choose(n)
  return decode.read_frames(record["path"], idx), idx


def _check_label(record: dict, num_classes: int) -> int:
  label = int(record["label"])
  if not 0 <= label < num_classes:
    raise UserError(f"label {label} out of range [0, {num_classes}) at {record.get('where', '?')}; check the "
                    "list file and config.dataset.num_classes.")
  return label


def _undecodable(record: dict, error: Exception, skip: bool) -> str:
  """-> the skipped video's name (file and list line), or the UserError when skipping is off."""
  if not skip:
    raise UserError(f"{error} ({record.get('where', '?')}). Replace or remove the video, or set "
                    "--config.video.skip_corrupt=True to skip undecodable videos (counted in the results).")
  return f"{record.get('path', '?')} ({record.get('where', '?')})"


@dataclasses.dataclass(frozen=True)
class TrainClip:
  """(record, rng) -> {'video': uint8 (T, S, S, 3), 'label'}, or a skipped undecodable video's marker (`skips`:
  counted and logged in the main process, not here in a reader that may be another process)."""
  num_frames: int
  stride: int
  sampling: str
  spatial: augment.TrainAugment
  num_classes: int
  skip_corrupt: bool = False

  def indices(self, n: int, rng: np.random.Generator) -> list[int]:
    return sampling.get(self.sampling)[0](n, self.num_frames, self.stride, rng)

  def __call__(self, record: dict, rng: np.random.Generator):
    label = _check_label(record, self.num_classes)
    try:
      frames, _ = _frames(record, lambda n: self.indices(n, rng))
    except decode.VideoError as e:
      return skips.marker(_undecodable(record, e, self.skip_corrupt))
    return {"video": self.spatial(frames, rng), "label": np.int32(label)}


@dataclasses.dataclass(frozen=True)
class TestViews:
  """record -> {'video': uint8 (V, T, S, S, 3), 'label', 'mask', 'skipped', 'skipped_where'} with V = temporal x
  spatial views; `skipped_where` (a string: host-only, the evaluator never sends it to a device) names a skipped
  video, '' otherwise."""
  size: int
  num_frames: int
  stride: int
  sampling: str
  temporal_views: int
  spatial_views: int
  num_classes: int
  skip_corrupt: bool = False

  @property
  def num_views(self) -> int:
    return self.temporal_views * self.spatial_views

  def indices(self, n: int) -> list[list[int]]:
    return sampling.get(self.sampling)[1](n, self.num_frames, self.stride, self.temporal_views)

  def empty(self, label: int = 0, skipped: str = "") -> dict:
    shape = (self.num_views, self.num_frames, self.size, self.size, 3)
    return {"video": np.zeros(shape, np.uint8), "label": np.int32(label), "mask": np.False_,
            "skipped": np.bool_(bool(skipped)), "skipped_where": np.str_(skipped)}

  def __call__(self, record: dict) -> dict:
    if record.get("padding"):
      return self.empty()
    label = _check_label(record, self.num_classes)
    try:
      frames, _ = _frames(record, lambda n: [i for view in self.indices(n) for i in view])
    except decode.VideoError as e:
      name = _undecodable(record, e, self.skip_corrupt)
      logging.warning("skipping undecodable evaluation video: %s: %s", name, e)
      return self.empty(label, skipped=name)
    views = []
    for clip in frames.reshape(self.temporal_views, self.num_frames, *frames.shape[1:]):
      views.extend(augment.spatial_crops(clip, self.size, self.spatial_views))
    return {"video": np.stack(views), "label": np.int32(label), "mask": np.True_, "skipped": np.False_,
            "skipped_where": np.str_("")}


@dataclasses.dataclass(frozen=True)
class Normalize:
  mode: str

  def __call__(self, record: dict) -> dict:
    if skips.is_marker(record):
      return record
    return {**record, "video": images.normalize(record["video"], self.mode)}


def _check(config) -> None:
  v = config.video
  if v.model == "none":
    raise UserError(f"config.video.model='none' builds an image model, but {config.dataset.name!r} is a video "
                    "dataset: set --config.video.model=frames (per-frame ViT + attentive pooling head) or tubelet "
                    "(VideoMAE-style), e.g. with configs/dyt_video.py or configs/sparse_tuning_video.py.")
  sampling.get(v.sampling)
  if config.dataset.normalization not in images.NORMALIZATIONS:
    raise UserError(f"config.dataset.normalization={config.dataset.normalization!r}; valid: "
                    f"{', '.join(images.NORMALIZATIONS)}.")
  for key in ("num_frames", "stride", "temporal_views", "spatial_views"):
    if int(v[key]) < 1:
      raise UserError(f"config.video.{key}={v[key]} must be >= 1.")


def train_clip(config, num_classes: int) -> TrainClip:
  v = config.video
  spatial = augment.TrainAugment(size=int(config.model.image_size), augment=v.augment, flip=bool(v.flip),
                                 scale=tuple(v.scale), rrc_scale=tuple(v.rrc_scale), randaugment=v.randaugment)
  return TrainClip(num_frames=int(v.num_frames), stride=int(v.stride), sampling=v.sampling, spatial=spatial,
                   num_classes=num_classes, skip_corrupt=bool(v.skip_corrupt))


def test_views(config, num_classes: int) -> TestViews:
  v = config.video
  return TestViews(size=int(config.model.image_size), num_frames=int(v.num_frames), stride=int(v.stride),
                   sampling=v.sampling, temporal_views=int(v.temporal_views), spatial_views=int(v.spatial_views),
                   num_classes=num_classes, skip_corrupt=bool(v.skip_corrupt))


def _num_classes(config, task) -> int:
  n = int(config.dataset.get("num_classes", -1))
  return n if n > 0 else task.num_classes


def _with_workers(ds: grain.IterDataset, config) -> grain.IterDataset:
  workers = int(config.video.num_workers)
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)) if workers > 0 else ds


def train_iterator(config: ml_collections.ConfigDict, *, seed: int, process_index: int | None = None,
                   process_count: int | None = None) -> grain.DatasetIterator:
  _check(config)
  pi, pc = image_pipeline._process(process_index, process_count)
  task, source, _ = open_source(config, config.dataset.split)
  batch = image_pipeline._per_host(int(config.train.batch_size), pc, "config.train.batch_size")
  shard = grain.MapDataset.source(source)[pi::pc]
  if len(shard) == 0:
    raise UserError(f"split {config.dataset.split!r} of {task.name!r} has {len(source)} videos: fewer than the "
                    f"{pc} hosts.")
  ds = image_pipeline.training_order(shard, seed, pi)
  ds = ds.random_map(train_clip(config, _num_classes(config, task))).map(Normalize(config.dataset.normalization))
  # Not image_pipeline.batched: the skipped videos' markers are dropped (and counted) between reading and batching.
  ds = ds.to_iter_dataset(image_pipeline._read_options(config, batch))
  ds = skips.DropSkipped(ds, limit=len(shard), split=config.dataset.split).batch(batch, drop_remainder=True)
  return skips.SkipTally(iter(_with_workers(ds, config)), config.dataset.split)


def eval_batches(config: ml_collections.ConfigDict, split: str | None = None, *, batch_size: int | None = None,
                 process_index: int | None = None, process_count: int | None = None) -> grain.IterDataset:
  _check(config)
  pi, pc = image_pipeline._process(process_index, process_count)
  split = split or config.dataset.eval_split
  task, source, _ = open_source(config, split)
  batch = image_pipeline._per_host(int(batch_size or config.eval.batch_size), pc,
                                   "eval batch size (config.eval.batch_size)")
  num_batches = math.ceil(math.ceil(len(source) / pc) / batch)
  padded = image_pipeline.PaddedShard(source, range(pi, len(source), pc), num_batches * batch)
  ds = grain.MapDataset.source(padded).map(test_views(config, _num_classes(config, task)))
  ds = ds.map(Normalize(config.dataset.normalization))
  return _with_workers(ds.to_iter_dataset(image_pipeline._read_options(config, batch)).batch(batch), config)


def num_examples(config: ml_collections.ConfigDict, split: str | None = None) -> int:
  try:
    return len(open_source(config, split or config.dataset.split)[1])
  except UserError as e:
    raise UserError(str(e).rstrip(".")) from None


def class_names(config: ml_collections.ConfigDict, split: str | None = None) -> tuple[str, ...]:
  return tuple(open_source(config, split or config.dataset.split)[2])
