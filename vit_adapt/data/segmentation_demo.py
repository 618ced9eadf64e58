"""`demo/digit_scenes`: an embedded semantic-segmentation set built from scikit-learn's digits (no download).

Each example is a 48 x 48 RGB canvas: a smooth random dark, nearly grey texture (values 15-75) with fine noise,
and one or two digits (the real 8 x 8 scans of `demo/digits`, nearest-upsampled 3x or 4x: 24 or 32 px, strokes
of 3-8 px) pasted at random places, later ones over earlier ones. Classes: background (0) and four object
classes (1-4), each drawn in its own colour family (red, green, blue, yellow, every channel jittered): the demo's
backbone is random and frozen, so what separates the classes must be visible in a 4 x 4 patch's pixels (colour),
and the masks (a scan pixel counts when its ink is above 4 of 16) are what must be delineated. The object class
of a digit is drawn at random, independently of its shape. Examples are generated deterministically from
(split, index); train uses the digits of `demo/digits`'s train split, test those of its test split, so no test
digit shape is ever seen in training. 1000 train, 100 test.

Chance: predicting background everywhere scores mIoU = (background share of the test pixels, 0.80) / 5 = 0.16
(`tests/test_segmentation_data.py` checks the share).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vit_adapt.data import demo
from vit_adapt.data.datasets import Dataset

CANVAS = 48
NUM_CLASSES = 5
SIZES = {"train": 1000, "test": 100}
_SPLIT_IDS = {"train": 1, "test": 2}


# Colour family of each object class (min, max per RGB channel): far from each other and from the grey background.
PALETTE = {1: ((190, 255), (20, 80), (20, 80)), 2: ((20, 80), (190, 255), (20, 80)),
           3: ((20, 80), (20, 80), (190, 255)), 4: ((190, 255), (190, 255), (20, 80))}


def _texture(rng: np.random.Generator) -> np.ndarray:
  coarse = rng.uniform(15, 75, (4, 4, 1)) + rng.uniform(-6, 6, (4, 4, 3))
  coarse = np.clip(coarse, 0, 255).astype(np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((CANVAS, CANVAS), Image.BICUBIC), np.float32)
  return smooth + rng.normal(0, 6, (CANVAS, CANVAS, 3))


def scene(split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
  """-> (uint8 image (48, 48, 3), uint8 label map (48, 48)) of example `index` of `split`."""
  pixels, labels = demo._digits()[split]
  rng = np.random.default_rng([_SPLIT_IDS[split], index])
  image = _texture(rng)
  label = np.zeros((CANVAS, CANVAS), np.uint8)
  for _ in range(int(rng.integers(1, 3))):
    k = int(rng.integers(len(labels)))
    cls = int(rng.integers(1, NUM_CLASSES))
    zoom = int(rng.integers(3, 5))
    ink = np.kron(pixels[k].astype(np.float32) / 255.0, np.ones((zoom, zoom), np.float32))
    s = ink.shape[0]
    y, x = (int(v) for v in rng.integers(0, CANVAS - s + 1, 2))
    colour = np.array([rng.uniform(lo, hi) for lo, hi in PALETTE[cls]])
    alpha = ink[..., None]
    image[y:y + s, x:x + s] = (1 - alpha) * image[y:y + s, x:x + s] + alpha * colour
    region = label[y:y + s, x:x + s]
    region[ink > 4 / 16] = cls
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
