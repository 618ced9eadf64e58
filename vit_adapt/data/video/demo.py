"""`demo/moving_digits`: an embedded clip dataset (no download) built from scikit-learn's digits.

A clip is 16 frames of a 40 x 40 canvas on which one handwritten digit (the 8 x 8 scan upscaled to 16 x 16) slides
from one end of a line through the centre to the other, the line's position jittered by up to 2 px. The class is
digit x axis of motion (horizontal, vertical, diagonal, anti-diagonal): 40 classes, chance 2.5 %, so both
appearance and motion matter. The sense of motion is random and not part of the class: a per-frame model whose
head pools the tokens of all frames (DyT's video model has no temporal embedding) cannot tell a clip from its
reverse, but it can tell the paths apart.

Clips are generated on the fly from (split, index) with a fixed seed; training clips use the digit scans of
`demo/digits`'s train split, test clips its test scans (unseen writers' digits). 2048 train and 512 test clips.
"""

from __future__ import annotations

import numpy as np

from vit_adapt.data import demo as digits_demo

NUM_FRAMES, CANVAS, DIGIT, AMPLITUDE, JITTER = 16, 40, 16, 12, 2
AXES = ((0, 1), (1, 0), (1, 1), (-1, 1))  # (dy, dx) unit steps: horizontal, vertical, diagonal, anti-diagonal
SIZES = {"train": 2048, "test": 512}
_SEED = 20240


def num_classes() -> int:
  return 10 * len(AXES)


def class_names() -> tuple[str, ...]:
  axes = ("horizontal", "vertical", "diagonal", "anti-diagonal")
  return tuple(f"{d} {a}" for d in range(10) for a in axes)


def make_clip(split: str, index: int) -> tuple[np.ndarray, int]:
  """-> (uint8 (16, 40, 40, 3), label) of clip `index` of `split`; the same arguments give the same clip."""
  pixels, labels = digits_demo._digits()[split]
  rng = np.random.default_rng([_SEED, 0 if split == "train" else 1, index])
  k = int(rng.integers(len(labels)))
  axis = int(rng.integers(len(AXES)))
  digit = np.kron(pixels[k], np.ones((2, 2), np.uint8))  # (16, 16)
  dy, dx = AXES[axis]
  sense = 1 if rng.random() < 0.5 else -1
  off_y, off_x = (int(v) for v in rng.integers(-JITTER, JITTER + 1, size=2))
  clip = np.zeros((NUM_FRAMES, CANVAS, CANVAS), np.uint8)
  hi = CANVAS - DIGIT
  for t in range(NUM_FRAMES):
    p = sense * (2.0 * t / (NUM_FRAMES - 1) - 1.0) * AMPLITUDE
    y = int(np.clip(round(hi / 2 + p * dy + off_y), 0, hi))
    x = int(np.clip(round(hi / 2 + p * dx + off_x), 0, hi))
    clip[t, y:y + DIGIT, x:x + DIGIT] = digit
  return np.repeat(clip[..., None], 3, axis=-1), int(labels[k]) * len(AXES) + axis


class MovingDigitsSource:
  """Random access to one split: {'frames': uint8 (16, 40, 40, 3), 'label', 'where'}."""

  def __init__(self, split: str):
    self.split = split
    self._n = SIZES[split]

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict:
    frames, label = make_clip(self.split, int(index))
    return {"frames": frames, "label": label, "where": f"demo/moving_digits {self.split} clip {index}"}
