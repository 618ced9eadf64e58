"""Colour palettes of the segmentation datasets: class id -> RGB, for the PNG masks `predict` writes.

`palette(dataset_name, num_classes)` -> uint8 (num_classes, 3): ADE20K's 150 colours as mmseg (and the official
DyT code) draw them, the demo's class colours (the centre of each colour family its scenes are drawn in, the
background grey), and for any other dataset (COCO-Stuff included) the PASCAL VOC colour map, distinct colours
for up to 256 classes.
"""

from __future__ import annotations

import numpy as np

from vit_adapt.data import segmentation_demo

# mmseg's ADE20KDataset palette, class 0 = 'wall' (label 1 of the annotation PNGs).
ADE20K = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)


def _demo() -> tuple:
  centre = lambda ranges: tuple((lo + hi) // 2 for lo, hi in ranges)
  return ((96, 96, 96),) + tuple(centre(segmentation_demo.PALETTE[c])
                                 for c in range(1, segmentation_demo.NUM_CLASSES))


def voc_colormap(n: int) -> np.ndarray:
  """PASCAL VOC's colour map: the bits of the class id spread over the high bits of R, G and B."""
  out = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (c & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    out[i] = (r, g, b)
  return out


# Dataset name -> its palette (a callable: the demo's is derived from its colour families).
PALETTES = {"ade20k": lambda: ADE20K, "demo/digit_scenes": _demo}


def palette(dataset_name: str, num_classes: int) -> np.ndarray:
  """uint8 (num_classes, 3); classes beyond a dataset's own palette get VOC colours."""
  own = np.asarray(PALETTES[dataset_name](), np.uint8) if dataset_name in PALETTES else np.zeros((0, 3), np.uint8)
  if len(own) >= num_classes:
    return own[:num_classes]
  return np.concatenate([own, voc_colormap(num_classes)[len(own):]])
