"""Semantic-segmentation data: sources of (image, label map) pairs and the grain pipelines (mmseg's recipe).

Sources (`open_source`): the embedded `demo/digit_scenes`, and the folder layouts users have:
  ADE20K         <root>/ADEChallengeData2016/{images,annotations}/{training,validation}/<id>.{jpg,png}
  COCO-Stuff-164k <root>/coco_stuff164k/{images,stuffthingmaps}/{train2017,val2017}/<id>.{jpg,png}
(`root` may also be that folder itself). Label maps are PNGs decoded to their stored indices ('L' or 'P'
mode; a palette is never applied) and mapped to class ids by the dataset's `label_fn` (ADE: 0 -> 255 ignored, k ->
k - 1); they are only ever resized with nearest neighbour. A label map whose size differs from its image, a
colour label map or an undecodable file is a UserError naming the file.

Training (`train_iterator`, mmseg's ADE20K pipeline): rescale to `segmentation.scale` (long, short) times a
ratio drawn from `ratio_range` keeping the aspect ratio (image bilinear, labels nearest), a random crop of
`model.image_size` in which no category covers more than `cat_max_ratio` of the labelled pixels (10 tries),
horizontal flip (p = 0.5), photometric distortion (brightness, contrast, saturation, hue), normalisation, padding
to the crop (pixels 0, labels 255). Batches: {'image' float32 (b, S, S, 3), 'label' int32 (b, S, S)}.
Evaluation (`eval_batches`): the keep-ratio resize to `segmentation.scale` (no randomness), shrunk further if it
does not fit `segmentation.eval_size`, padded to that canvas (labels 255), plus 'mask' for padded batch slots.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os

import grain
import ml_collections
import numpy as np
from PIL import Image, UnidentifiedImageError

from vit_adapt.data import datasets, images, pipeline
from vit_adapt.data.segmentation_demo import DigitScenesSource
from vit_adapt.errors import UserError

IGNORE = 255
# folder -> (image dir, label dir, {our split: sub-folder}).
_LAYOUTS = {
    "ADEChallengeData2016": ("images", "annotations", {"train": "training", "validation": "validation"}),
    "coco_stuff164k": ("images", "stuffthingmaps", {"train": "train2017", "validation": "val2017"}),
}


class FolderPairs:
  """One split of a folder layout: {'image': path, 'label': path, 'where'} for every image with a label map."""

  def __init__(self, task: datasets.Dataset, split: str, root: str):
    if not root:
      raise UserError(f"task {task.name!r} reads the folder layout: set config.dataset.root (the folder holding "
                      f"{task.folder}/). {task.note}")
    base = os.path.join(root, task.folder) if os.path.isdir(os.path.join(root, task.folder)) else root
    image_dir, label_dir, subdirs = _LAYOUTS[task.folder]
    images_at, labels_at = (os.path.join(base, d, subdirs[split]) for d in (image_dir, label_dir))
    for d in (images_at, labels_at):
      if not os.path.isdir(d):
        raise UserError(f"task {task.name!r}: folder {d} does not exist (config.dataset.root={root!r}). {task.note}")
    stems = {os.path.splitext(f)[0]: f for f in os.listdir(images_at) if f.lower().endswith((".jpg", ".jpeg", ".png"))}
    labels = {os.path.splitext(f)[0] for f in os.listdir(labels_at) if f.endswith(".png")}
    missing = sorted(set(stems) - labels)
    if missing:
      raise UserError(f"task {task.name!r}: {len(missing)} images in {images_at} have no label map in {labels_at} "
                      f"(e.g. {missing[0]}.png).")
    self._pairs = [(os.path.join(images_at, stems[s]), os.path.join(labels_at, s + ".png")) for s in sorted(stems)]
    if not self._pairs:
      raise UserError(f"task {task.name!r}: no images in {images_at}.")

  def __len__(self) -> int:
    return len(self._pairs)

  def __getitem__(self, index: int) -> dict:
    image, label = self._pairs[index]
    return {"image": image, "label": label, "where": image}


def open_source(config: ml_collections.ConfigDict, split: str):
  """-> (task, source) of `split` of config.dataset.name (a segmentation dataset)."""
  task = datasets.get_dataset(config.dataset.name)
  task.check_split(split)
  if task.kind == "demo":
    return task, DigitScenesSource(task, split)
  if config.dataset.source != "folder":
    raise UserError(f"task {task.name!r} has no tfds source here: set config.dataset.source='folder'. {task.note}")
  return task, FolderPairs(task, split, config.dataset.root)


def decode_label(data, where: str) -> np.ndarray:
  """A label map (path, PNG bytes or array) -> uint8 (H, W) of its stored indices, never resampled."""
  if isinstance(data, np.ndarray):
    return data.astype(np.uint8) if data.ndim == 2 else data[..., 0].astype(np.uint8)
  try:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
      if img.mode not in ("L", "P", "I", "I;16"):
        raise UserError(f"label map {where} has mode {img.mode!r}: expected a single-channel PNG of class "
                        "indices ('L' or 'P'); convert colour-coded maps to index maps first.")
      label = np.asarray(img)
  except (OSError, UnidentifiedImageError, SyntaxError) as e:
    raise UserError(f"cannot decode label map {where}: {e}. Replace or remove the file.") from None
  if label.max(initial=0) > 255:
    raise UserError(f"label map {where} has values above 255: expected 8-bit class indices.")
  return label.astype(np.uint8)


def load_pair(record: dict, task: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
  """A source record -> (uint8 (H, W, 3) image, uint8 (H, W) class ids, 255 = ignored)."""
  where = record["where"]
  image = record["image"]
  if not isinstance(image, np.ndarray):
    try:
      image = images.decode(image)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
      raise UserError(f"cannot decode image {where}: {e}. Replace or remove the file.") from None
  label_where = record["label"] if isinstance(record["label"], str) else f"of {where}"
  label = task.label_fn({"label": decode_label(record["label"], label_where)})
  if label.shape != image.shape[:2]:
    raise UserError(f"label map {label_where} is {label.shape[1]}x{label.shape[0]} but its image {where} is "
                    f"{image.shape[1]}x{image.shape[0]}: they must be the same size.")
  return image, label


# -------------------------------------------------------------------------------------------------- transforms

def rescale_size(h: int, w: int, long: float, short: float) -> tuple[int, int]:
  """mmcv's keep-ratio rescale: the largest size with long side <= `long` and short side <= `short`."""
  s = min(long / max(h, w), short / min(h, w))
  return int(h * s + 0.5), int(w * s + 0.5)


def resize_pair(image, label, size: tuple[int, int]):
  """Image bilinear, label map nearest (its values are never blended)."""
  if image.shape[:2] == size:
    return image, label
  hw = (size[1], size[0])
  return (np.asarray(Image.fromarray(image).resize(hw, Image.BILINEAR)),
          np.asarray(Image.fromarray(label).resize(hw, Image.NEAREST)))


def crop_box(label: np.ndarray, crop: int, cat_max_ratio: float, rng: np.random.Generator):
  """mmseg's RandomCrop: up to 10 tries for a crop where no category exceeds `cat_max_ratio` of the labelled
  pixels (ignoring 255); -> (y, x)."""
  h, w = label.shape
  for _ in range(10):
    y, x = int(rng.integers(0, max(h - crop, 0) + 1)), int(rng.integers(0, max(w - crop, 0) + 1))
    if cat_max_ratio >= 1.0:
      break
    values, counts = np.unique(label[y:y + crop, x:x + crop], return_counts=True)
    counts = counts[values != IGNORE]
    if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
      break
  return y, x


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """mmseg's PhotoMetricDistortion: brightness +-32, contrast and saturation x[0.5, 1.5], hue +-18 degrees, each
  with probability 0.5, contrast first or last at random."""
  img = image.astype(np.float32)
  if rng.integers(2):
    img = img + rng.uniform(-32, 32)
  contrast_first = bool(rng.integers(2))

  def contrast(img):
    return img * rng.uniform(0.5, 1.5) if rng.integers(2) else img

  if contrast_first:
    img = contrast(img)
  if rng.integers(2) or rng.integers(2):
    hsv = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("HSV"), np.float32)
    if rng.integers(2):
      hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
    if rng.integers(2):
      hsv[..., 0] = (hsv[..., 0] + rng.uniform(-18, 18) * 256 / 360) % 256
    img = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), np.float32)
  if not contrast_first:
    img = contrast(img)
  return np.clip(img, 0, 255).astype(np.uint8)


def pad_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]):
  """Pad at the bottom/right to `size`: pixels 0, labels 255."""
  ph, pw = size[0] - image.shape[0], size[1] - image.shape[1]
  return (np.pad(image, ((0, ph), (0, pw), (0, 0))),
          np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE))


def scales(config) -> tuple[tuple[float, float], tuple[int, int]]:
  """(segmentation.scale, segmentation.eval_size) with their defaults filled in."""
  s = int(config.model.image_size)
  seg = config.segmentation
  scale = tuple(seg.scale) if any(seg.scale) else (4 * s, s)
  eval_size = tuple(int(v) for v in seg.eval_size) if any(seg.eval_size) else (s, s)
  return scale, eval_size


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  task: datasets.Dataset
  crop: int
  scale: tuple[float, float]
  ratio_range: tuple[float, float]
  cat_max_ratio: float
  photometric: bool
  normalization: str

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    image, label = load_pair(record, self.task)
    r = rng.uniform(*self.ratio_range)
    image, label = resize_pair(image, label, rescale_size(*label.shape, self.scale[0] * r, self.scale[1] * r))
    y, x = crop_box(label, self.crop, self.cat_max_ratio, rng)
    image, label = image[y:y + self.crop, x:x + self.crop], label[y:y + self.crop, x:x + self.crop]
    if rng.integers(2):
      image, label = image[:, ::-1], label[:, ::-1]
    if self.photometric:
      image = photometric(image, rng)
    image, label = pad_pair(images.normalize(image, self.normalization), label, (self.crop, self.crop))
    return {"image": image, "label": label.astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  task: datasets.Dataset
  scale: tuple[float, float]
  size: tuple[int, int]
  normalization: str

  def resized(self, h: int, w: int) -> tuple[int, int]:
    """The size an (h, w) image takes on the canvas (its top-left corner; the rest is padding)."""
    h, w = rescale_size(h, w, *self.scale)
    shrink = min(1.0, self.size[0] / h, self.size[1] / w)
    return min(int(h * shrink + 0.5), self.size[0]), min(int(w * shrink + 0.5), self.size[1])

  def __call__(self, record: dict) -> dict:
    if record.get("padding"):
      return {"image": np.zeros((*self.size, 3), np.float32), "label": np.full(self.size, IGNORE, np.int32),
              "mask": np.False_}
    image, label = load_pair(record, self.task)
    image, label = resize_pair(image, label, self.resized(*label.shape))
    image, label = pad_pair(images.normalize(image, self.normalization), label, self.size)
    return {"image": image, "label": label.astype(np.int32), "mask": np.True_}


# -------------------------------------------------------------------------------------------------- pipelines

def train_iterator(config: ml_collections.ConfigDict, *, seed: int, process_index: int | None = None,
                   process_count: int | None = None) -> grain.DatasetIterator:
  pi, pc = pipeline._process(process_index, process_count)
  task, source = open_source(config, config.dataset.split)
  batch = pipeline._per_host(int(config.train.batch_size), pc, "config.train.batch_size")
  shard = grain.MapDataset.source(source)[pi::pc]
  seg = config.segmentation
  scale, _ = scales(config)
  transform = TrainTransform(task, int(config.model.image_size), scale, tuple(seg.ratio_range),
                             float(seg.cat_max_ratio), bool(seg.photometric), config.dataset.normalization)
  ds = pipeline.training_order(shard, seed, pi).random_map(transform)
  return iter(pipeline.batched(ds, config, batch))


def eval_transform(config: ml_collections.ConfigDict, task: datasets.Dataset) -> EvalTransform:
  scale, size = scales(config)
  return EvalTransform(task, scale, size, config.dataset.normalization)


def eval_batches(config: ml_collections.ConfigDict, split: str | None = None, *, batch_size: int | None = None,
                 process_index: int | None = None, process_count: int | None = None) -> grain.IterDataset:
  pi, pc = pipeline._process(process_index, process_count)
  task, source = open_source(config, split or config.dataset.eval_split)
  batch = pipeline._per_host(int(batch_size or config.eval.batch_size), pc, "config.eval.batch_size")
  num_batches = math.ceil(math.ceil(len(source) / pc) / batch)
  padded = pipeline.PaddedShard(source, range(pi, len(source), pc), num_batches * batch)
  ds = grain.MapDataset.source(padded).map(eval_transform(config, task))
  return ds.to_iter_dataset(pipeline._read_options(config, batch)).batch(batch)


def num_examples(config: ml_collections.ConfigDict, split: str | None = None) -> int:
  try:
    return len(open_source(config, split or config.dataset.split)[1])
  except UserError as e:
    raise UserError(str(e).rstrip(".")) from None
