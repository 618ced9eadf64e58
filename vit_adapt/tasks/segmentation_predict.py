"""Segmentation masks of arbitrary images with the evaluation's own path (what `python -m vit_adapt.predict
--images=... --masks=DIR` runs).

Each image goes through the evaluation transform (`data.segmentation.EvalTransform`: keep-ratio resize to
`segmentation.scale`, shrunk to fit the `segmentation.eval_size` canvas, normalised, padded) and the task's
`eval_forward` (sliding windows, overlapping logits averaged) on batches of canvases of one static shape, so it
compiles once. The logits of the image's part of the canvas are resized back to the image's own size (bilinear,
as mmseg does before its argmax) and the argmax is the mask: uint8 class ids, written as a palette PNG ('P' mode:
its pixel values are the class ids, a viewer shows the dataset's colours) and optionally as an overlay (the
image blended with the mask's colours).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vit_adapt.data import datasets, segmentation_palette
from vit_adapt.data import segmentation as data
from vit_adapt.models import upernet
from vit_adapt.tasks import segmentation


class MaskPredictor:
  """The task's evaluation forward compiled once for `batch_size` canvases; images of any size in, masks out."""

  def __init__(self, config, model, variables, batch_size: int):
    dataset = datasets.get_dataset(config.dataset.name)
    self.transform = data.eval_transform(config, dataset)
    self.variables = variables
    self.batch_size = batch_size
    self.forward = jax.jit(lambda v, x: segmentation.eval_forward(model, v, x)[0])

  def canvas(self, image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> the evaluation's normalised canvas (its label map is not needed: a dummy one)."""
    record = {"image": image, "label": np.zeros(image.shape[:2], np.uint8), "where": "image"}
    return self.transform(record)["image"]

  def logits(self, canvases: np.ndarray) -> np.ndarray:
    """(n <= batch_size, h, w, 3) canvases -> their logits (n, h, w, C), the batch padded to its static shape."""
    n = canvases.shape[0]
    if n < self.batch_size:
      canvases = np.concatenate([canvases, np.zeros((self.batch_size - n,) + canvases.shape[1:], canvases.dtype)])
    return np.asarray(self.forward(self.variables, canvases))[:n]

  def mask(self, logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A canvas's logits -> the uint8 (H, W) class ids of the image of `size` (H, W) placed on it."""
    h, w = self.transform.resized(*size)
    part = jnp.asarray(logits[None, :h, :w])
    return np.asarray(jnp.argmax(upernet.resize_bilinear(part, size)[0], -1)).astype(np.uint8)

  def masks(self, items: Iterable[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, uint8 image) -> (name, image, mask), `batch_size` canvases per forward."""
    buf = []
    for item in items:
      buf.append(item)
      if len(buf) == self.batch_size:
        yield from self._run(buf)
        buf = []
    if buf:
      yield from self._run(buf)

  def _run(self, buf):
    logits = self.logits(np.stack([self.canvas(img) for _, img in buf]))
    for (name, img), lg in zip(buf, logits):
      yield name, img, self.mask(lg, img.shape[:2])


def palette(config) -> np.ndarray:
  return segmentation_palette.palette(config.dataset.name, int(config.dataset.num_classes))


def mask_png(mask: np.ndarray, colours: np.ndarray) -> Image.Image:
  """A 'P'-mode PNG image: pixel values = class ids, the palette = the dataset's colours."""
  img = Image.fromarray(mask)  # 'L'; putpalette makes it 'P' with the same values
  img.putpalette(colours.reshape(-1).tolist())
  return img


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """The image blended with its mask's colours: (1 - alpha) x image + alpha x colour, uint8."""
  blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours[mask].astype(np.float32)
  return np.clip(np.round(blend), 0, 255).astype(np.uint8)
