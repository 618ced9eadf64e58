"""Spatial transforms of clips (uint8 (T, H, W, 3)): every frame of a clip gets the same crop, flip and
RandAugment operations (one random draw per clip), as the official video loaders do.

  scale_jitter   K400 training: the shorter side resized to round(U(round(S * lo), round(S * hi))) (aspect kept, the
                 longer side floored), a random S x S crop (offsets uniform in [0, side - S), the official
                 `randint`), then a horizontal flip with probability 1/2 when `flip`.
  randaug_rrc    SSv2 training: RandAugment (`config.video.randaugment`, timm's `rand-mM-nN-mstdS-inc1` syntax) then an
                 Inception random-resized crop (area `config.video.rrc_scale`, aspect 3/4..4/3) resized to S x S;
                 flipped only when `flip` (SSv2: never; left/right is part of its labels).
  none           the test transform of one centred view.
Test views (`spatial_views`): the shorter side resized to S (the longer one w * S // h, as the official loader),
then V crops evenly spaced along the longer side (one view: the centre crop; three: start, middle, end).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from vit_adapt.data import images
from vit_adapt.data import transforms as image_transforms
from vit_adapt.errors import UserError

TRAIN_AUGMENTS = ("scale_jitter", "randaug_rrc", "none")


def _resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  if frames.shape[1:3] == (height, width):
    return frames
  return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in frames])


def short_side_resize(frames: np.ndarray, size: int) -> np.ndarray:
  """The official test resize: shorter side -> size, longer side -> longer * size // shorter."""
  h, w = frames.shape[1:3]
  if h < w:
    return _resize_frames(frames, size, w * size // h)
  return _resize_frames(frames, h * size // w, size)


def spatial_crops(frames: np.ndarray, size: int, views: int) -> list[np.ndarray]:
  """`views` (size x size) crops evenly spaced along the longer side of the resized clip."""
  frames = short_side_resize(frames, size)
  h, w = frames.shape[1:3]
  margin = max(h, w) - size
  out = []
  for v in range(views):
    start = margin // 2 if views == 1 else round(margin * v / (views - 1))
    out.append(frames[:, start:start + size] if h > w else frames[:, :, start:start + size])
  return [np.ascontiguousarray(c) for c in out]


def scale_jitter_crop(frames: np.ndarray, size: int, scale: tuple[float, float],
                      rng: np.random.Generator) -> np.ndarray:
  short = int(round(rng.uniform(round(size * scale[0]), round(size * scale[1]))))
  h, w = frames.shape[1:3]
  if min(h, w) != short:
    if w < h:
      frames = _resize_frames(frames, int(math.floor(h / w * short)), short)
    else:
      frames = _resize_frames(frames, short, int(math.floor(w / h * short)))
  h, w = frames.shape[1:3]
  y = int(rng.integers(0, h - size)) if h > size else 0
  x = int(rng.integers(0, w - size)) if w > size else 0
  return frames[:, y:y + size, x:x + size]


# ---------------------------------------------------------------------------------------------------------------
# RandAugment (timm's `rand-m7-n4-mstd0.5-inc1` semantics: N ops drawn with replacement, each applied with
# probability 1/2 at magnitude ~ N(M, mstd) clipped to [0, 10]; `inc1` = the increasing-severity op set).

_FILL = (128, 128, 128)


def _affine(img, matrix):
  return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=_FILL)


def _enhance(cls):
  return lambda img, f: cls(img).enhance(f)


def _signed(rng, v):
  return -v if rng.random() < 0.5 else v


# name -> (level (magnitude in [0, 10], rng) -> argument, op(img, argument))
_OPS = {
    "AutoContrast": (lambda m, rng: None, lambda img, a: ImageOps.autocontrast(img)),
    "Equalize": (lambda m, rng: None, lambda img, a: ImageOps.equalize(img)),
    "Invert": (lambda m, rng: None, lambda img, a: ImageOps.invert(img)),
    "Rotate": (lambda m, rng: _signed(rng, m / 10 * 30), lambda img, a: img.rotate(a, resample=Image.BILINEAR,
                                                                                      fillcolor=_FILL)),
    "PosterizeIncreasing": (lambda m, rng: 4 - int(m / 10 * 4), lambda img, a: ImageOps.posterize(img, max(a, 1))),
    "SolarizeIncreasing": (lambda m, rng: 256 - int(m / 10 * 256), lambda img, a: ImageOps.solarize(img, a)),
    "SolarizeAdd": (lambda m, rng: int(m / 10 * 110), lambda img, a: Image.fromarray(np.where(
        np.asarray(img) < 128, np.minimum(np.asarray(img).astype(np.int32) + a, 255), np.asarray(img)).astype(
            np.uint8))),
    "ColorIncreasing": (lambda m, rng: 1 + _signed(rng, m / 10 * 0.9), _enhance(ImageEnhance.Color)),
    "ContrastIncreasing": (lambda m, rng: 1 + _signed(rng, m / 10 * 0.9), _enhance(ImageEnhance.Contrast)),
    "BrightnessIncreasing": (lambda m, rng: 1 + _signed(rng, m / 10 * 0.9), _enhance(ImageEnhance.Brightness)),
    "SharpnessIncreasing": (lambda m, rng: 1 + _signed(rng, m / 10 * 0.9), _enhance(ImageEnhance.Sharpness)),
    "ShearX": (lambda m, rng: _signed(rng, m / 10 * 0.3), lambda img, a: _affine(img, (1, a, 0, 0, 1, 0))),
    "ShearY": (lambda m, rng: _signed(rng, m / 10 * 0.3), lambda img, a: _affine(img, (1, 0, 0, a, 1, 0))),
    "TranslateXRel": (lambda m, rng: _signed(rng, m / 10 * 0.45),
                      lambda img, a: _affine(img, (1, 0, a * img.size[0], 0, 1, 0))),
    "TranslateYRel": (lambda m, rng: _signed(rng, m / 10 * 0.45),
                      lambda img, a: _affine(img, (1, 0, 0, 0, 1, a * img.size[1]))),
}


@dataclasses.dataclass(frozen=True)
class RandAugment:
  num_ops: int = 4
  magnitude: float = 7.0
  magnitude_std: float = 0.5

  @classmethod
  def parse(cls, spec: str) -> "RandAugment":
    """'rand-m7-n4-mstd0.5-inc1' -> RandAugment(4, 7, 0.5). Only the increasing op set (inc1) is implemented."""
    parts = spec.split("-")
    if parts[0] != "rand":
      raise UserError(f"config.video.randaugment={spec!r}: expected timm's 'rand-m<M>-n<N>[-mstd<S>]-inc1'.")
    kw = {}
    for part in parts[1:]:
      m = re.fullmatch(r"(mstd|m|n|inc)([\d.]+)", part)
      if not m:
        raise UserError(f"config.video.randaugment={spec!r}: cannot read {part!r}.")
      key, value = m.groups()
      if key == "inc" and value != "1":
        raise UserError(f"config.video.randaugment={spec!r}: only the increasing op set (inc1) is implemented.")
      kw.update({"m": {"magnitude": float(value)}, "n": {"num_ops": int(float(value))},
                 "mstd": {"magnitude_std": float(value)}, "inc": {}}[key])
    return cls(**kw)

  def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    names = list(_OPS)
    plan = []
    for k in rng.integers(len(names), size=self.num_ops):
      if rng.random() >= 0.5:  # each op is applied with probability 1/2
        continue
      m = self.magnitude
      if self.magnitude_std > 0:
        m = float(np.clip(rng.normal(m, self.magnitude_std), 0.0, 10.0))
      level, op = _OPS[names[int(k)]]
      plan.append((op, level(m, rng)))
    if not plan:
      return frames
    out = []
    for f in frames:
      img = Image.fromarray(f)
      for op, arg in plan:
        img = op(img, arg)
      out.append(np.asarray(img.convert("RGB")))
    return np.stack(out)


@dataclasses.dataclass(frozen=True)
class TrainAugment:
  """One training clip's spatial transform (a callable of (frames, rng))."""
  size: int
  augment: str = "scale_jitter"
  flip: bool = True
  scale: tuple[float, float] = (1.0, 1.15)
  rrc_scale: tuple[float, float] = (0.08, 1.0)
  randaugment: str = ""

  def __post_init__(self):
    if self.augment not in TRAIN_AUGMENTS:
      raise UserError(f"config.video.augment={self.augment!r}: use one of {', '.join(TRAIN_AUGMENTS)}.")
    if self.randaugment:
      RandAugment.parse(self.randaugment)

  def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if self.augment == "scale_jitter":
      frames = scale_jitter_crop(frames, self.size, self.scale, rng)
    elif self.augment == "randaug_rrc":
      if self.randaugment:
        frames = RandAugment.parse(self.randaugment)(frames, rng)
      box = image_transforms.inception_crop_box(frames.shape[1], frames.shape[2], rng, scale=self.rrc_scale)
      frames = np.stack([images.resized_crop(f, box, self.size) for f in frames])
    else:
      frames = spatial_crops(frames, self.size, 1)[0]
    if self.flip and rng.random() < 0.5:
      frames = frames[:, :, ::-1]
    return np.ascontiguousarray(frames)
