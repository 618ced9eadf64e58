"""The input pipelines the trainer uses: grain over a task's source (tfds ArrayRecord, image folder or demo).

  train_iterator(config, seed=...)  infinite, shuffled (reshuffled each epoch), per-host sharded, checkpointable
                                    iterator of {'image': float32 (b, S, S, 3), 'label': int32 (b,)
                                    [, 'soft_label': float32 (b, C)]}, b = train.batch_size // process_count.
  eval_batches(config, split)       finite, deterministic batches {'image', 'label', 'mask'} of a static size,
                                    padded; every example of the split is counted exactly once over all hosts.
  num_examples                      split sizes (the schedule's lengths: `vit_adapt.train.optim.schedule_lengths`).

Per-record work (read, decode, resize, augment, normalise) runs in grain's prefetch threads
(`config.dataset.num_threads`; PIL and numpy release the GIL); the main thread only stacks batches and, when
configured, mixes them (mixup/cutmix, soft labels). Random
transforms get the generator grain derives from the seed and the element's position, so the same seed gives the
same batches, and restoring a saved iterator state (`grain.checkpoint.CheckpointSave/Restore`, or
`get_state/set_state`) continues exactly where the saved run was.
"""

from __future__ import annotations

import dataclasses
import math

import grain
import ml_collections
import numpy as np

from vit_adapt.data import images, sources, transforms
from vit_adapt.data.datasets import Dataset
from vit_adapt.errors import UserError


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # the input pipeline runs without JAX (grain workers, tests) unless asked for the host
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def _per_host(batch_size: int, process_count: int, key: str) -> int:
  if batch_size <= 0 or batch_size % process_count:
    raise UserError(f"{key}={batch_size} must be a positive multiple of the number of hosts ({process_count}).")
  return batch_size // process_count


def _check_options(config: ml_collections.ConfigDict) -> None:
  d = config.dataset
  if d.augment not in transforms.AUGMENTS:
    raise UserError(f"config.dataset.augment={d.augment!r}; valid: {', '.join(transforms.AUGMENTS)}.")
  if d.normalization not in images.NORMALIZATIONS:
    raise UserError(f"config.dataset.normalization={d.normalization!r}; valid: "
                    f"{', '.join(images.NORMALIZATIONS)}.")
  for key in ("mixup", "cutmix"):
    if d[key] < 0:
      raise UserError(f"config.dataset.{key}={d[key]} must be >= 0 (a Beta concentration; 0 = off).")
  if not 0 <= d.label_smoothing < 1:
    raise UserError(f"config.dataset.label_smoothing={d.label_smoothing} must be in [0, 1).")


def _batch_transform(config: ml_collections.ConfigDict, task: Dataset) -> transforms.BatchTransform:
  d = config.dataset
  return transforms.BatchTransform(num_classes=sources.num_classes(config, task), mixup=float(d.mixup), cutmix=float(d.cutmix),
                                   label_smoothing=float(d.label_smoothing))


def _read_options(config: ml_collections.ConfigDict, per_host_batch: int) -> grain.ReadOptions:
  # Threads prefetch single records, so the buffer holds `dataset.prefetch` batches' worth of them.
  threads = int(config.dataset.num_threads)
  return grain.ReadOptions(num_threads=threads,
                           prefetch_buffer_size=max(int(config.dataset.prefetch) * per_host_batch, threads))


def host_seed(seed: int, process_index: int) -> int:
  """Distinct per-host streams (shuffle order and augmentation) from one run seed."""
  return int(np.random.SeedSequence([int(seed), int(process_index)]).generate_state(1)[0])


def training_order(ds: grain.MapDataset, seed: int, process_index: int) -> grain.MapDataset:
  """The training stream's order over one host's records: shuffled by the host's seed, reshuffled each epoch,
  endless. It depends only on the number of records and the seed, so every training path that reads the same
  records in this order (the image pipeline, a method's feature cache, shared-feature training via
  `example_order`) sees the same examples at the same steps."""
  return ds.seed(host_seed(seed, process_index)).shuffle().repeat(None)


def batched(ds: grain.MapDataset, config: ml_collections.ConfigDict, per_host_batch: int) -> grain.IterDataset:
  """Per-host training batches (the last partial batch of the endless stream never exists: drop_remainder)."""
  return ds.to_iter_dataset(_read_options(config, per_host_batch)).batch(per_host_batch, drop_remainder=True)


def example_order(num_examples: int, batch_size: int, seed: int, steps: int) -> np.ndarray:
  """(steps, batch_size) indices into a split of `num_examples`: the examples a one-host training run reads at
  each step (`train_iterator` with the same seed), batches crossing epoch boundaries."""
  ds = training_order(grain.MapDataset.range(num_examples)[0::1], seed, 0)
  flat = np.fromiter((ds[k] for k in range(steps * batch_size)), np.int64, steps * batch_size)
  return flat.astype(np.int32).reshape(steps, batch_size)


def train_iterator(config: ml_collections.ConfigDict, *, seed: int, process_index: int | None = None,
                   process_count: int | None = None) -> grain.DatasetIterator:
  """The training stream of config.dataset.split: shuffle, repeat, decode, resize/augment, batch (drop remainder).

  Host `process_index` reads records process_index, process_index + process_count, ... of the split.
  """
  _check_options(config)
  pi, pc = _process(process_index, process_count)
  task, source = sources.open_source(config, config.dataset.split)
  batch = _per_host(int(config.train.batch_size), pc, "config.train.batch_size")
  shard = grain.MapDataset.source(source)[pi::pc]
  if len(shard) == 0:
    raise UserError(f"split {config.dataset.split!r} of {task.name!r} has {len(source)} examples: fewer than the "
                    f"{pc} hosts.")
  seed_pi = host_seed(seed, pi)
  size, augment = int(config.model.image_size), config.dataset.augment
  ds = shard.map(transforms.Load(sources.num_classes(config, task), task.channel_fix))
  if augment not in transforms.CROP_AUGMENTS:  # crops need the full image; else resize once, before randomness
    ds = ds.map(transforms.Resize(size))
    if len(shard) * size * size * 3 <= config.dataset.get("cache_mb", 4096) * 2**20:
      ds = grain.MapDataset.source(_LazyCache(ds))
  ds = training_order(ds, seed, pi)
  if augment != "none":
    ds = ds.random_map(transforms.Augment(size, augment))
  ds = ds.map(transforms.Normalize(config.dataset.normalization))
  it = batched(ds, config, batch)
  it = it.random_map(_batch_transform(config, task), seed=seed_pi ^ 0x5EED)
  return iter(it)


class _LazyCache:
  """Remembers each record of a deterministic dataset the first time it is read.

  VTAB-1k trains ~100 epochs over 1,000 images with no augmentation: after the first epoch every batch comes from
  memory (1,000 images at 224 px are 150 MB) instead of being read, decoded and resized again. Records are
  identical either way, so iterator checkpoints and reproducibility are unaffected.
  """

  def __init__(self, dataset: grain.MapDataset):
    self._dataset = dataset
    self._records = [None] * len(dataset)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    record = self._records[index]
    if record is None:  # two threads may both fill a slot: same value, and list stores are atomic
      record = self._records[index] = self._dataset[index]
    return record


class PaddedShard:
  """One host's share of an eval split, padded with placeholder records to a multiple of the batch size
  (`{'padding': True}`; the image, video and segmentation evaluations all read their splits through it)."""

  def __init__(self, source, indices: range, length: int):
    self._source, self._indices, self._length = source, indices, length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, i: int) -> dict:
    if i < len(self._indices):
      return self._source[self._indices[i]]
    return {"padding": True}


@dataclasses.dataclass(frozen=True)
class _EvalRecord:
  load: transforms.Load
  transform: transforms.EvalTransform
  normalize: transforms.Normalize

  def __call__(self, record: dict) -> dict:
    if record.get("padding"):
      size = self.transform.size
      record = {"image": np.zeros((size, size, 3), np.uint8), "label": np.int32(0), "mask": np.False_}
    else:
      record = {**self.transform(self.load(record)), "mask": np.True_}
    return self.normalize(record)


def eval_batches(config: ml_collections.ConfigDict, split: str | None = None, *, batch_size: int | None = None,
                 process_index: int | None = None, process_count: int | None = None) -> grain.IterDataset:
  """Deterministic, finite (re-iterable) batches of `split` (default config.dataset.eval_split).

  `batch_size` (default config.eval.batch_size) is global; each host gets batch_size // process_count examples
  per batch from its shard (records process_index::process_count). All hosts yield the same number of batches;
  padded slots have mask False, so sums over `mask` count every example exactly once.
  """
  _check_options(config)
  pi, pc = _process(process_index, process_count)
  split = split or config.dataset.eval_split
  task, source = sources.open_source(config, split)
  batch = _per_host(int(batch_size or config.eval.batch_size), pc, "eval batch size (config.eval.batch_size)")
  per_host = math.ceil(len(source) / pc)
  num_batches = math.ceil(per_host / batch)
  padded = PaddedShard(source, range(pi, len(source), pc), num_batches * batch)
  record = _EvalRecord(transforms.Load(sources.num_classes(config, task), task.channel_fix),
                       transforms.EvalTransform(int(config.model.image_size), config.dataset.augment),
                       transforms.Normalize(config.dataset.normalization))
  ds = grain.MapDataset.source(padded).map(record)
  return ds.to_iter_dataset(_read_options(config, batch)).batch(batch)


def num_examples(config: ml_collections.ConfigDict, split: str | None = None) -> int:
  """Examples in `split` (default config.dataset.split) over all hosts.

  A UserError (dataset not prepared, bad folder layout, ...) comes with its message ending without a period, as
  the tfds source's do: the training preflight continues the sentence with where to get the data.
  """
  try:
    return len(sources.open_source(config, split or config.dataset.split)[1])
  except UserError as e:
    raise UserError(str(e).rstrip(".")) from None
