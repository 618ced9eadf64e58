"""Image decoding, resizing and normalisation shared by the data pipelines and `predict`."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

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


def to_rgb_array(img: Image.Image) -> np.ndarray:
  return np.asarray(img.convert("RGB"), dtype=np.uint8)


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
  """Encoded bytes or a file path -> uint8 HWC RGB. Raises PIL/OSError on undecodable input."""
  with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as img:
    return to_rgb_array(img)


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
