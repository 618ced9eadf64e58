"""`demo/digit_scenes`: an embedded semantic-segmentation set built from scikit-learn's digits (no download).

Each example is a 48 x 48 RGB canvas: a smooth random dark colour texture (channels 20-110) with fine noise, and
one to three digits (the real 8 x 8 scans of `demo/digits`, nearest-upsampled 2x or 3x, drawn in a random bright
colour, channels 150-255: the digits stand out, their shapes are what must be learned) pasted
at random places, later ones over earlier ones. The label map says, per pixel, which digit covers it (class
digit + 1; a scan pixel counts as digit when its ink is above 4 of 16) or background (class 0): 11 classes.
Examples are generated deterministically from (split, index); train uses the digits of `demo/digits`'s train
split, test those of its test split, so no test digit is ever seen in training. 1000 train, 100 test.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vit_adapt.data import demo
from vit_adapt.data.datasets import Dataset

CANVAS = 48
NUM_CLASSES = 11
SIZES = {"train": 1000, "test": 100}
_SPLIT_IDS = {"train": 1, "test": 2}


def _texture(rng: np.random.Generator) -> np.ndarray:
  coarse = rng.uniform(20, 110, (4, 4, 3)).astype(np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((CANVAS, CANVAS), Image.BICUBIC), np.float32)
  return smooth + rng.normal(0, 8, (CANVAS, CANVAS, 3))


def scene(split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
  """-> (uint8 image (48, 48, 3), uint8 label map (48, 48)) of example `index` of `split`."""
  pixels, labels = demo._digits()[split]
  rng = np.random.default_rng([_SPLIT_IDS[split], index])
  image = _texture(rng)
  label = np.zeros((CANVAS, CANVAS), np.uint8)
  for _ in range(int(rng.integers(1, 4))):
    k = int(rng.integers(len(labels)))
    zoom = int(rng.integers(2, 4))
    ink = np.kron(pixels[k].astype(np.float32) / 255.0, np.ones((zoom, zoom), np.float32))
    s = ink.shape[0]
    y, x = (int(v) for v in rng.integers(0, CANVAS - s + 1, 2))
    colour = rng.uniform(150, 255, 3)
    alpha = ink[..., None]
    image[y:y + s, x:x + s] = (1 - alpha) * image[y:y + s, x:x + s] + alpha * colour
    region = label[y:y + s, x:x + s]
    region[ink > 4 / 16] = labels[k] + 1
  return np.clip(np.round(image), 0, 255).astype(np.uint8), label


class DigitScenesSource:
  """Random access to one split: {'image': uint8 (48, 48, 3), 'label': uint8 (48, 48), 'where'}."""

  def __init__(self, task: Dataset, split: str):
    self.task, self.split = task, task.check_split(split)

  def __len__(self) -> int:
    return SIZES[self.split]

  def __getitem__(self, index: int) -> dict:
    image, label = scene(self.split, int(index))
    return {"image": image, "label": label, "where": f"{self.task.name} {self.split} example {index}"}
