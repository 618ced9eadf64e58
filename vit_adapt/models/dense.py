"""Dense heads on any method's ViT: `config.model.head` = 'linear' (the classifier, unchanged) or 'upernet'.

'upernet' subclasses the method's model class (`dense_model_cls`): the method's encoder runs unchanged (DyT's
routers and adapters, AdaptFormer's adapters, LoRA, ...), the patch tokens of blocks `feature_blocks` become
(H/P, W/P, D) maps, and the head (`models/upernet.py`: BEiT pyramid, UperNet, auxiliary FCN) lives under the
parameter scope `head/` and the `batch_stats` collection, so every method's `^head/` trainable pattern trains it
as it trains a classifier. The model returns (logits (B, H, W, C) at the input resolution, out) with
`out['aux_logits']` in training. Tokens a method dispatches past its MLP stay in the maps (DyT keeps them dense).

`slide_logits` is the sliding-window inference over images larger than the model's window (mmseg's 'slide').
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from vit_adapt.errors import UserError
from vit_adapt.models import upernet

HEADS = ("linear", "upernet")


@dataclasses.dataclass(frozen=True)
class DenseSettings:
  feature_blocks: tuple[int, ...] = (3, 5, 7, 11)
  channels: int = 768
  aux_channels: int = 256
  dropout: float = 0.1
  stride: int = 341          # sliding-window stride at inference (pixels)
  window_batch: int = 8      # windows per compiled forward (static shapes)


@functools.cache
def dense_model_cls(base):
  """The method's model class `base` with the UperNet head instead of the classifier."""

  class DenseViT(base):
    dense: DenseSettings = DenseSettings()

    def make_head(self):
      d = self.dense
      self.head = upernet.SegmentationHead(self.num_classes, self.width, channels=d.channels,
                                           aux_channels=d.aux_channels, dropout=d.dropout, dtype=self.dtype)

    def features(self, images, train: bool = False, **flags):
      """-> (the patch tokens of `feature_blocks` as (B, g, g, D) maps, the encoder's `out`)."""
      b = images.shape[0]
      _, out = self.encode(self.embed(images), train, **flags)
      g = self.grid
      return [out[f"block_{i}"][:, 1:].reshape(b, g, g, self.width) for i in self.dense.feature_blocks], out

    def pyramid(self, images, **flags):
      """-> (the 4 pyramid levels at strides P/4, P/2, P, 2P, the encoder's `out`), in evaluation mode (the
      official segmentation backbone's outputs; tests/test_dyt_seg_official.py)."""
      feats, out = self.features(images, False, **flags)
      return self.head.pyramid(feats), out

    def __call__(self, images, train: bool = False, **flags):
      _, h, w, _ = images.shape
      feats, out = self.features(images, train, **flags)
      logits, aux = self.head(feats, train, with_aux=train or self.is_initializing())
      if aux is not None:
        out["aux_logits"] = upernet.resize_bilinear(aux.astype(jnp.float32), (h, w))
      return upernet.resize_bilinear(logits.astype(jnp.float32), (h, w)), out

  DenseViT.__name__ = DenseViT.__qualname__ = f"Dense{base.__name__}"
  return DenseViT


def apply_head(model_config, model_cls, kwargs: dict) -> tuple[type, dict]:
  """(the method's model class, its kwargs) -> those of the model with `config.model.head`."""
  head = model_config.get("head", "linear")
  if head not in HEADS:
    raise UserError(f"config.model.head={head!r}: use one of {', '.join(HEADS)}.")
  if head == "linear":
    return model_cls, kwargs
  blocks = tuple(int(i) for i in model_config.feature_blocks)
  if len(blocks) != 4 or not all(0 <= i < kwargs["depth"] for i in blocks):
    raise UserError(f"config.model.feature_blocks={blocks}: give 4 block indices (zero-based) below the depth "
                    f"{kwargs['depth']}, e.g. (3, 5, 7, 11) for 12 blocks.")
  settings = DenseSettings(feature_blocks=blocks, channels=int(model_config.head_channels),
                           aux_channels=int(model_config.aux_channels), dropout=float(model_config.head_dropout),
                           stride=int(model_config.slide_stride), window_batch=int(model_config.window_batch))
  return dense_model_cls(model_cls), {**kwargs, "dense": settings}


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """mmseg's slide grid along one axis: ceil((size - window) / stride) + 1 windows, the last one flush with the
  end (a size below the window gets one window at 0)."""
  n = max(math.ceil((size - window) / stride), 0) + 1
  return [max(min(i * stride, size - window), 0) for i in range(n)]


def slide_logits(apply_fn: Callable, images, *, window: int, stride: int, window_batch: int):
  """Sliding-window inference: -> (logits (B, H, W, C), per-image statistics averaged over the windows).

  `apply_fn(windows (n, window, window, 3)) -> (logits (n, window, window, C), out)`. Windows of `window` px at
  `stride` cover each image (mmseg's grid); their logits are summed where they overlap and divided by the
  number of windows covering each pixel. An image smaller than a window is padded with zeros to one window (its
  logits cropped back). All windows of the batch run `window_batch` at a time through one compiled forward
  (`lax.map`), padded with copies of the last window. `out` keeps the 1-D per-window statistics (DyT's
  `gmacs`, `activation_rate`), averaged over each image's windows.
  """
  b, h, w, _ = images.shape
  ph, pw = max(h, window), max(w, window)
  if (ph, pw) != (h, w):
    images = jnp.pad(images, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
  starts = [(y, x) for y in window_starts(ph, window, stride) for x in window_starts(pw, window, stride)]
  crops = jnp.concatenate([images[:, y:y + window, x:x + window] for y, x in starts])  # (n_win * B, ...)
  n = crops.shape[0]
  chunks = -(-n // window_batch)
  pad = chunks * window_batch - n
  if pad:
    crops = jnp.concatenate([crops, jnp.repeat(crops[-1:], pad, axis=0)])

  def run(chunk):
    logits, out = apply_fn(chunk)
    stats = {k: v for k, v in out.items() if getattr(v, "ndim", None) == 1 and v.shape[0] == window_batch}
    return logits.astype(jnp.float32), stats

  logits, stats = jax.lax.map(run, crops.reshape((chunks, window_batch) + crops.shape[1:]))
  logits = logits.reshape((-1,) + logits.shape[2:])[:n].reshape((len(starts), b) + logits.shape[2:])
  total = jnp.zeros((b, ph, pw, logits.shape[-1]), jnp.float32)
  count = jnp.zeros((1, ph, pw, 1), jnp.float32)
  for k, (y, x) in enumerate(starts):
    total = total.at[:, y:y + window, x:x + window].add(logits[k])
    count = count.at[:, y:y + window, x:x + window].add(1.0)
  stats = {k: v.reshape(-1)[:n].reshape(len(starts), b).mean(axis=0) for k, v in stats.items()}
  return (total / count)[:, :h, :w], stats
