"""Cached-feature training for SynQT (`config.method.cache_features = 'kv' | 'hidden'`).

SynQT never back-propagates through the backbone, and VTAB-1k trains without augmentation, so the frozen image
path of every training example is the same in every epoch. The cache computes it ONCE and training then runs
only the query path:

  'kv'      per-layer keys/values of the image tokens, (L, 2, N, D) per example: a training step is the query
            path alone (the fastest; ViT-B/16: 7.3 MB per image in bfloat16).
  'hidden'  per-layer hidden states, (L, N, D): half the storage; every step recomputes LN + K/V projections
            (2 N D^2 per layer, ~1/6 of the image forward).

Storage: a raw memory-mapped file under `<workdir>/synqt_cache/<fingerprint>/` (or `config.method.cache_dir`),
bfloat16 (default) or float32 (`cache_dtype`), read by a grain source; the operating system's page cache keeps
it in memory when it fits. Its size is printed before anything is computed, and a cache that does not fit on
the disk is refused with a UserError. Building is resumable (progress is committed batch by batch) and the cache
is invalidated by a fingerprint of the backbone weights actually used (a digest of the frozen parameters, so a
different `model.init`, seed-initialised backbone or image size changes it), the model shape, the data options
and the storage options, plus a digest of the decoded training images and labels, which is re-checked at the
start of every run (a changed dataset on the same path triggers a rebuild of the changed part).

Training order: the cached iterator shuffles with the same grain operations and per-host seed as
`pipeline.train_iterator`, so it visits the examples in exactly the same order; with the image path's
stochastic depth off (it must be: the cache holds one deterministic forward), cached and uncached training give
the same loss curve. Batches are {'features': (b, ...) storage dtype, 'label' [, 'soft_label']}; the model
recognises features by their shape.

Trainer hook: `Method.feature_cache(config, workdir, model, variables)` returns this iterator (or None when
caching is off); it replaces `pipeline.train_iterator` and is checkpointable the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import grain
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging

from vit_adapt.data import pipeline, transforms
from vit_adapt.errors import UserError
from vit_adapt.models import params as params_lib

CACHE_VERSION = 1
_STORAGE = {"bfloat16": (np.uint16, ml_dtypes.bfloat16), "float32": (np.float32, np.float32)}


def check_cacheable(config) -> None:
  c, d = config.method, config.dataset
  if c.cache_dtype not in _STORAGE:
    raise UserError(f"config.method.cache_dtype={c.cache_dtype!r}: use 'bfloat16' or 'float32'.")
  if d.augment != "none" or d.mixup > 0 or d.cutmix > 0:
    raise UserError(
        f"config.method.cache_features={c.cache_features!r} needs the same image every epoch, but the config "
        f"augments (dataset.augment={d.augment!r}, mixup={d.mixup}, cutmix={d.cutmix}). Set augment='none' and "
        "mixup=cutmix=0 (the VTAB-1k protocol), or turn the cache off with method.cache_features=''.")
  if c.image_drop_path and config.model.drop_path > 0:
    logging.info("SynQT feature cache: the image path's stochastic depth is off (the cache holds one "
                 "deterministic forward); the query path keeps config.model.drop_path=%s.", config.model.drop_path)


def example_shape(model, kind: str) -> tuple[int, ...]:
  n = 1 + model.num_patches
  return (model.depth, 2, n, model.width) if kind == "kv" else (model.depth, n, model.width)


def params_digest(params, trainable_patterns) -> str:
  """Digest of the frozen parameters (what the image features depend on)."""
  frozen = params_lib.flatten(params_lib.split_params(params, trainable_patterns)[1])
  h = hashlib.blake2b(digest_size=16)
  for path in sorted(frozen):
    a = np.ascontiguousarray(jax.device_get(frozen[path]))
    h.update(f"{path}:{a.dtype}:{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def fingerprint(config, model, params, trainable_patterns, process_index: int, process_count: int) -> str:
  d = config.dataset
  desc = {
      "version": CACHE_VERSION, "kind": config.method.cache_features, "dtype": config.method.cache_dtype,
      "model": [model.width, model.depth, model.num_heads, model.mlp_dim, model.patch_size, model.image_size,
                str(np.dtype(model.dtype))],
      # split_lists only when set, so the fingerprints of caches written before the field existed still hold.
      "data": [d.name, d.source, d.data_dir, d.root, d.split, d.normalization]
              + ([d.split_lists] if d.get("split_lists") else []),
      "host": [process_index, process_count],
      "params": params_digest(params, trainable_patterns),
  }
  return hashlib.blake2b(json.dumps(desc, sort_keys=True).encode(), digest_size=16).hexdigest()


def _batch_digest(images: np.ndarray, labels: np.ndarray) -> str:
  h = hashlib.blake2b(digest_size=16)
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
  return h.hexdigest()


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)  # atomic: a crash leaves the previous progress record


class FeatureCache:
  """The on-disk cache of one host's share of the training split (see the module docstring)."""

  def __init__(self, directory: str, num_examples: int, shape: tuple[int, ...], dtype: str):
    self.directory, self.num_examples, self.shape, self.dtype = directory, num_examples, tuple(shape), dtype
    self.features_path = os.path.join(directory, "features.bin")
    self.labels_path = os.path.join(directory, "labels.npy")
    self.meta_path = os.path.join(directory, "meta.json")

  @property
  def nbytes(self) -> int:
    return self.num_examples * int(np.prod(self.shape)) * np.dtype(_STORAGE[self.dtype][0]).itemsize

  def _memmap(self, mode: str) -> np.memmap:
    return np.memmap(self.features_path, dtype=_STORAGE[self.dtype][0], mode=mode,
                     shape=(self.num_examples,) + self.shape)

  def _meta(self) -> dict:
    if os.path.exists(self.meta_path):
      with open(self.meta_path) as f:
        meta = json.load(f)
      if meta.get("shape") == [self.num_examples, *self.shape] and meta.get("dtype") == self.dtype:
        return meta
    return {"shape": [self.num_examples, *self.shape], "dtype": self.dtype, "chunks": [], "complete": False}

  def build(self, batches, compute) -> dict:
    """Fills the cache from `batches` ({'image','label','mask'} in split order) with `compute(images)`.

    Batches whose (images, labels) digest matches the committed progress are skipped, so an interrupted build
    resumes and a finished cache is only re-verified; from the first batch that differs on, rows are recomputed.
    Returns {'computed': rows computed now, 'reused': rows kept}.
    """
    os.makedirs(self.directory, exist_ok=True)
    meta = self._meta()
    new_file = not os.path.exists(self.features_path)
    if new_file:
      free = shutil.disk_usage(self.directory).free
      if self.nbytes > free:
        raise UserError(
            f"the SynQT feature cache needs {self.nbytes / 2**30:.2f} GiB but {self.directory} has "
            f"{free / 2**30:.2f} GiB free. Point config.method.cache_dir at a larger disk, use "
            "method.cache_dtype='bfloat16' or method.cache_features='hidden' (half the size), or turn the cache off "
            "(method.cache_features='').")
      meta = {**meta, "chunks": [], "complete": False}
    mm = self._memmap("r+" if not new_file else "w+")
    labels = np.load(self.labels_path) if os.path.exists(self.labels_path) and not new_file else \
        np.zeros((self.num_examples,), np.int32)
    chunks, row, computed, reused = list(meta["chunks"]), 0, 0, 0
    trusted = True  # committed chunks stay valid until the first mismatch
    for j, batch in enumerate(batches):
      mask = np.asarray(batch["mask"], bool)
      images, y = np.asarray(batch["image"])[mask], np.asarray(batch["label"])[mask]
      n = len(y)
      if row + n > self.num_examples:
        raise UserError(f"the training split yielded more than the {self.num_examples} examples it reported; "
                        "did the data change while the cache was built? Delete " + self.directory)
      digest = _batch_digest(images, y)
      if trusted and j < len(chunks) and chunks[j] == digest:
        reused += n
      else:
        if trusted and j < len(chunks):
          logging.info("SynQT feature cache: data changed at example %d; recomputing from there.", row)
        trusted = False
        chunks = chunks[:j]
        raw, view = _STORAGE[self.dtype]
        feats = np.asarray(compute(np.asarray(batch["image"])))[mask].astype(view)
        mm[row:row + n] = feats.view(raw)
        labels[row:row + n] = y
        computed += n
        chunks.append(digest)
        mm.flush()
        np.save(self.labels_path, labels)
        _write_json(self.meta_path, {**meta, "chunks": chunks, "complete": False})
      row += n
    if row != self.num_examples:
      raise UserError(f"the training split yielded {row} examples, expected {self.num_examples}; delete "
                      f"{self.directory} if the data changed while it was being built.")
    del mm
    _write_json(self.meta_path, {**meta, "chunks": chunks, "complete": True})
    return {"computed": computed, "reused": reused}

  def source(self) -> "CachedSource":
    return CachedSource(self)


class CachedSource:
  """grain random-access source over a complete cache: {'features', 'label'} per example."""

  def __init__(self, cache: FeatureCache):
    self._features = cache._memmap("r")
    self._view = _STORAGE[cache.dtype][1]
    self._labels = np.load(cache.labels_path)

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, i: int) -> dict:
    return {"features": np.array(self._features[i]).view(self._view), "label": self._labels[i]}


def feature_cache(config, workdir: str, model, variables, *, trainable):
  """`Method.feature_cache.iterator` for SynQT: builds/verifies the cache and returns the cached training
  iterator, or None when `config.method.cache_features` is ''. `trainable`: SynQT's trainable patterns (what
  the fingerprint leaves out)."""

  kind = config.method.cache_features
  if not kind:
    return None
  check_cacheable(config)
  pi, pc = jax.process_index(), jax.process_count()
  n_total = pipeline.num_examples(config, config.dataset.split)
  n_host = len(range(pi, n_total, pc))
  shape = example_shape(model, kind)
  fp = fingerprint(config, model, variables["params"], trainable, pi, pc)
  root = config.method.cache_dir or os.path.join(workdir, "synqt_cache")
  cache = FeatureCache(os.path.join(root, f"{fp}-p{pi}of{pc}"), n_host, shape, config.method.cache_dtype)
  per_example = cache.nbytes / max(n_host, 1)
  print(f"SynQT feature cache ({kind}, {cache.dtype}): {n_host} examples x {per_example / 2**20:.2f} MiB = "
        f"{cache.nbytes / 2**30:.3f} GiB at {cache.directory}", flush=True)

  storage = jnp.bfloat16 if cache.dtype == "bfloat16" else jnp.float32
  compute = jax.jit(lambda v, x: model.apply(v, x, kind, method="image_features")[kind].astype(storage))
  b = int(config.train.batch_size)
  batches = pipeline.eval_batches(config, config.dataset.split, batch_size=b * pc, process_index=pi,
                                  process_count=pc)
  stats = cache.build(batches, lambda x: compute(variables, x))
  print(f"SynQT feature cache: {stats['computed']} examples computed, {stats['reused']} reused", flush=True)

  # The image pipeline's training order over this host's examples, and its batching.
  ds = pipeline.training_order(grain.MapDataset.source(cache.source()), config.seed, pi)
  it = pipeline.batched(ds, config, b // pc)
  if config.dataset.label_smoothing > 0:
    c, s = int(config.dataset.num_classes), float(config.dataset.label_smoothing)
    it = it.map(lambda batch: {**batch, "soft_label": transforms.smooth_one_hot(batch["label"], c, s)})
  return iter(it)
