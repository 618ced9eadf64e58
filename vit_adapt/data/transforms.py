"""Per-record and per-batch transforms of the input pipelines (pure numpy + PIL, no TensorFlow).

Records flow as dicts: a source yields {'image': encoded bytes | uint8 array | file path, 'label', 'where'}; `Load`
turns that into {'image': uint8 (H, W, 3), 'label': int32}; per-record transforms resize (and augment) to (S, S, 3)
uint8 and normalise to float32, all in grain's reader threads; batches get soft labels and mixup/cutmix. Random
transforms take the `np.random.Generator` grain derives from the pipeline seed and the record's position, so a run
is reproducible and a restored iterator continues with the same randomness.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import UnidentifiedImageError

from vit_adapt.data import images
from vit_adapt.errors import UserError

# Training augmentations by config name (`config.dataset.augment`) and the evaluation transform paired with each:
# the VTAB-1k protocol resizes the whole image (aspect not kept) and does not augment; the full-dataset recipes
# train on Inception-style random resized crops, VPT's FGVC recipe on random S x S crops of the image resized to
# shorter side 256/224 S ('vpt_crop'), and both evaluate on a resize-256 / centre-crop-224 view.
AUGMENTS = ("none", "flip", "inception_crop", "vpt_crop")
# The augmentations that crop the full decoded image themselves (no whole-image resize before them).
CROP_AUGMENTS = ("inception_crop", "vpt_crop")
# Shorter side : crop side of the crop recipes (256 / 224, the ImageNet convention).
CROP_FRACTION = 224 / 256


def _channel_fix(image: np.ndarray, fix: str) -> np.ndarray:
  """-> uint8 (H, W, 3). 'tile': grayscale to RGB; 'binary_tile': {0, 1} masks (dSprites) scaled by 255 first."""
  if image.ndim == 2:
    image = image[..., None]
  if fix == "binary_tile":
    # dSprites stores {0, 1}; VTAB multiplies by 255. Clipping keeps any other input in range as well.
    image = np.minimum(image.astype(np.uint16) * 255, 255).astype(np.uint8)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:  # RGBA arrays: drop alpha like PIL's convert('RGB')
    image = image[..., :3]
  return np.ascontiguousarray(image, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class Load:
  """Raw source record -> {'image': uint8 (H, W, 3), 'label': int32}; undecodable images and labels outside
  [0, num_classes) are UserErrors naming the record (file and list line, or split and index)."""

  num_classes: int
  channel_fix: str = "none"

  def __call__(self, record: dict) -> dict:
    where = record.get("where", "?")
    image = record["image"]
    if isinstance(image, np.ndarray):
      array = image
    else:
      try:
        array = images.decode(image)
      except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        name = image if isinstance(image, str) else "encoded image"
        raise UserError(f"cannot decode {name} ({where}): {e}. Replace or remove the corrupt file.") from None
    label = int(record["label"])
    if not 0 <= label < self.num_classes:
      raise UserError(f"label {label} out of range [0, {self.num_classes}) at {where}; check the task's label "
                      "mapping and config.dataset.num_classes.")
    return {"image": _channel_fix(array, self.channel_fix), "label": np.int32(label)}


def inception_crop_box(height: int, width: int, rng: np.random.Generator, scale=(0.08, 1.0),
                       ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """RandomResizedCrop's box (top, left, h, w): area fraction ~ U(scale), log aspect ratio ~ U(log ratio),
  ten attempts, then the central crop with the aspect clamped to `ratio` (torchvision's algorithm)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def vpt_crop_box(height: int, width: int, rng: np.random.Generator,
                 crop_fraction: float = CROP_FRACTION) -> tuple[int, int, int, int]:
  """VPT's FGVC training crop (torchvision Resize(256) + RandomCrop(224)) as a box (top, left, side, side) of the
  original image: the square of side crop_fraction x the shorter side at a uniform position. Cropping the box and
  resizing it to (S, S) equals resizing the shorter side to S / crop_fraction and cropping S x S, in one resize."""
  side = max(1, min(height, width, int(round(min(height, width) * crop_fraction))))
  return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side, side


@dataclasses.dataclass(frozen=True)
class Resize:
  """Loaded record -> (S, S, 3) uint8, whole image, aspect not kept (VTAB). Deterministic, hence cacheable."""

  size: int

  def __call__(self, record: dict) -> dict:
    return {**record, "image": images.resize(record["image"], self.size)}


@dataclasses.dataclass(frozen=True)
class Augment:
  """The random part of training preprocessing (a grain `random_map` callable).

  'flip' expects records already resized (`Resize`); the crops ('inception_crop', 'vpt_crop') take the full
  decoded image and crop and resize it to (S, S) themselves, then flip.
  """

  size: int
  augment: str

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    image = record["image"]
    if self.augment in CROP_AUGMENTS:
      box_fn = inception_crop_box if self.augment == "inception_crop" else vpt_crop_box
      image = images.resized_crop(image, box_fn(image.shape[0], image.shape[1], rng), self.size)
    if rng.random() < 0.5:
      image = image[:, ::-1]
    return {**record, "image": np.ascontiguousarray(image)}


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """Loaded record -> (S, S, 3) uint8: whole-image resize, or resize-shorter + centre crop after crop training."""

  size: int
  augment: str = "none"

  def __call__(self, record: dict) -> dict:
    image = record["image"]
    if self.augment in CROP_AUGMENTS:
      image = images.resize_center_crop(image, self.size, CROP_FRACTION)
    else:
      image = images.resize(image, self.size)
    return {**record, "image": image}


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
  """(b,) int -> (b, C) float32 with `smoothing` spread uniformly over all classes (timm's convention)."""
  off = smoothing / num_classes
  out = np.full((len(labels), num_classes), off, np.float32)
  out[np.arange(len(labels)), labels] = 1.0 - smoothing + off
  return out


def cutmix_box(size: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
  """A box of about (1 - lam) of the image around a uniform centre, clipped to the image: (y0, y1, x0, x1)."""
  cut = math.sqrt(1.0 - lam)
  ch, cw = int(size * cut), int(size * cut)
  cy, cx = int(rng.integers(0, size)), int(rng.integers(0, size))
  return (max(cy - ch // 2, 0), min(cy + ch // 2, size), max(cx - cw // 2, 0), min(cx + cw // 2, size))


@dataclasses.dataclass(frozen=True)
class Normalize:
  """uint8 image -> float32 by `config.dataset.normalization`, per record so it runs in the reader threads
  (numpy releases the GIL): the main thread only stacks batches."""

  mode: str = "minus_one_one"

  def __call__(self, record: dict) -> dict:
    return {**record, "image": images.normalize(record["image"], self.mode)}


@dataclasses.dataclass(frozen=True)
class BatchTransform:
  """Soft labels for a stacked float32 batch, with mixup/cutmix when configured (a grain `random_map` callable).

  Mixing pairs each example with the batch reversed (timm's 'batch' mode); with both mixup and cutmix on, each
  batch uses one of them with probability 1/2. Normalisation is affine, so mixing after it equals mixing pixels.
  """

  num_classes: int
  mixup: float = 0.0        # Beta(alpha, alpha) concentration; 0 = off
  cutmix: float = 0.0       # Beta(alpha, alpha) concentration; 0 = off
  label_smoothing: float = 0.0

  @property
  def soft_labels(self) -> bool:
    return self.mixup > 0 or self.cutmix > 0 or self.label_smoothing > 0

  def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
    out = {"image": batch["image"], "label": np.asarray(batch["label"], np.int32)}
    if not self.soft_labels:
      return out
    soft = smooth_one_hot(out["label"], self.num_classes, self.label_smoothing)
    modes = [m for m, alpha in (("mixup", self.mixup), ("cutmix", self.cutmix)) if alpha > 0]
    if modes:
      mode = modes[int(rng.integers(len(modes)))]
      lam = float(rng.beta(getattr(self, mode), getattr(self, mode)))
      x = out["image"]
      if mode == "mixup":  # in place: chained float expressions on big temporaries are slow in NumPy
        x = x * np.float32(lam)
        x += np.float32(1.0 - lam) * out["image"][::-1]
      else:
        size = x.shape[1]
        y0, y1, x0, x1 = cutmix_box(size, lam, rng)
        x = x.copy()
        x[:, y0:y1, x0:x1] = out["image"][::-1, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (size * size)  # the area actually pasted
      out["image"] = x.astype(np.float32, copy=False)
      soft = lam * soft + (1.0 - lam) * soft[::-1]
    out["soft_label"] = soft.astype(np.float32)
    return out
