"""Image decoding, resizing and normalisation shared by the data pipelines and `predict`."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vit_adapt.errors import UserError

# Pixel normalisations by config name (`config.dataset.normalization`). The Google ViT checkpoints were
# pre-trained on [-1, 1]; several PyTorch codes use the ImageNet statistics instead.
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0

# In-place second steps: the same float32 values as `x / 127.5 - 1.0`, but a chained expression on a large
# temporary makes NumPy probe the call stack for temporary elision, which costs ~20x the arithmetic itself.
def _minus_one_one(x: np.ndarray) -> np.ndarray:
  out = x / np.float32(127.5)
  out -= np.float32(1.0)
  return out


def _imagenet(x: np.ndarray) -> np.ndarray:
  out = x - _IMAGENET_MEAN
  out /= _IMAGENET_STD
  return out


NORMALIZATIONS = {
    "minus_one_one": _minus_one_one,
    "imagenet": _imagenet,
}


def normalize(images_uint8: np.ndarray, mode: str = "minus_one_one") -> np.ndarray:
  """uint8 (..., 3) -> float32 normalised pixels."""
  return NORMALIZATIONS[mode](np.asarray(images_uint8, np.float32)).astype(np.float32, copy=False)


def to_rgb_array(img: Image.Image, name: str = "an image") -> np.ndarray:
  """Any PIL image -> uint8 HWC RGB, scaling high-bit-depth modes to 8 bits instead of clipping them.

  PIL's `convert("RGB")` clips the 16-bit / 32-bit integer and float modes to 0..255, which turns almost every
  pixel of a 16-bit PNG white. The rule here, per mode:
    'I;16', 'I;16L', 'I;16B', 'I;16N'  16-bit samples: round(value / 257) (0 -> 0, 65535 -> 255);
    'I' (32-bit integers)              treated as 16-bit samples when every value is in 0..65535, as PIL opens
                                       some 16-bit files in this mode; other ranges are refused;
    'F' (32-bit floats)                values in [0, 1]: round(value * 255); else values in [0, 255]: rounded;
                                       other ranges (negative, above 255, NaN or inf) are refused.
  A refused image is a UserError naming `name` (the file). Every other mode goes through `convert("RGB")`.
  """
  if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
    return np.repeat(_to_uint8_gray(img, name)[..., None], 3, axis=-1)
  return np.asarray(img.convert("RGB"), dtype=np.uint8)


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_uint8_gray(img: Image.Image, name: str) -> np.ndarray:
  """A single-channel high-bit-depth image -> uint8 (H, W), by the rule of `to_rgb_array`."""
  x = np.asarray(img)
  if img.mode == "F":
    x = x.astype(np.float64)
    if not np.isfinite(x).all() or (x.size and (x.min() < 0 or x.max() > 255)):
      lo, hi = (float(np.nanmin(x)), float(np.nanmax(x))) if np.isfinite(x).any() else (np.nan, np.nan)
      raise UserError(f"{name} is a float image (PIL mode 'F') with values in [{lo:g}, {hi:g}]"
                      f"{'' if np.isfinite(x).all() else ' and NaN/inf'}; vit_adapt reads float images with "
                      "values in [0, 1] or [0, 255] only. Save it as an 8- or 16-bit PNG.")
    scale = 255.0 if x.size == 0 or x.max() <= 1.0 else 1.0
    return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)
  x = x.astype(np.int64)
  if img.mode == "I" and x.size and (x.min() < 0 or x.max() > 65535):
    raise UserError(f"{name} is a 32-bit integer image (PIL mode 'I') with values in [{x.min()}, {x.max()}], "
                    "outside the 16-bit range 0..65535 that vit_adapt scales to 8 bits. Save it as an 8- or "
                    "16-bit PNG.")
  return ((x * 2 + 257) // 514).astype(np.uint8)  # round(x / 257) in integers (257 is odd: no ties)


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bicubic resize of a uint8 HWC image to (size, size) (aspect ratio not kept, as in the VTAB protocol)."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.shape[:2] == (size, size):
    return image
  return to_rgb_array(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def decode(data: bytes | str) -> np.ndarray:
  """Encoded bytes or a file path -> uint8 HWC RGB (16-bit and float images scaled: `to_rgb_array`).

  Raises PIL/OSError on undecodable input, and UserError naming the file for an image whose values cannot be
  mapped to 8 bits.
  """
  encoded = isinstance(data, (bytes, bytearray))
  with Image.open(io.BytesIO(data) if encoded else data) as img:
    return to_rgb_array(img, "an encoded image" if encoded else str(data))


def resized_crop(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Crop `box` = (top, left, height, width) of a uint8 HWC RGB image and bicubic-resize it to (size, size)."""
  top, left, h, w = box
  return to_rgb_array(Image.fromarray(image).resize((size, size), Image.BICUBIC,
                                                    box=(left, top, left + w, top + h)))


def resize_center_crop(image: np.ndarray, size: int, crop_fraction: float = 224 / 256) -> np.ndarray:
  """The ImageNet evaluation transform: bicubic-resize the shorter side to size / crop_fraction (256 for 224),
  keeping the aspect ratio, then take the central (size, size) crop."""
  h, w = image.shape[:2]
  short = int(size / crop_fraction)
  new_h, new_w = (short, max(short, int(short * w / h))) if h <= w else (max(short, int(short * h / w)), short)
  image = to_rgb_array(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return image[top:top + size, left:left + size]
