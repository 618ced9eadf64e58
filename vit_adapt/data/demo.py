"""`demo/digits`: scikit-learn's handwritten digits as an embedded dataset (ships with scikit-learn, no download).

1797 real 8x8 grayscale scans of the digits 0-9 (UCI optdigits test set) with their labels. Pixel values 0..16
are scaled to 0..255; the pipeline tiles them to RGB and bicubic-upsamples them to the model resolution like any
other image. The train/test split is fixed (seed 0, independent of the run's seed): 1437 train, 360 test.
"""

from __future__ import annotations

import functools

import numpy as np

from vit_adapt.data.datasets import Dataset

NUM_TEST = 360
_SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  from sklearn.datasets import load_digits  # heavy import (scipy): only when the demo data is read

  data = load_digits()
  pixels = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
  labels = data.target.astype(np.int32)
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
  test, train = order[:NUM_TEST], order[NUM_TEST:]
  return {"train": (pixels[train], labels[train]), "test": (pixels[test], labels[test])}


class DigitsSource:
  """Random access to one split: {'image': uint8 (8, 8), 'label', 'where'}."""

  def __init__(self, task: Dataset, split: str):
    self.task, self.split = task, task.check_split(split)
    self._images, self._labels = _digits()[split]

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict:
    return {"image": self._images[index], "label": int(self._labels[index]),
            "where": f"demo/digits {self.split} example {index}"}

  def __repr__(self) -> str:
    return f"DigitsSource({self.split!r}, n={len(self)})"
