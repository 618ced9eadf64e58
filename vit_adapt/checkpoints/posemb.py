"""Position-embedding resampling when the checkpoint's patch grid differs from the model's.

Bilinear interpolation with half-pixel centres and no antialiasing: the same resampling timm applies
(`resample_abs_pos_embed`, `F.interpolate(mode='bilinear', align_corners=False)`), so a model loaded at a new
resolution here computes what the same model loaded by timm computes. The class slot is kept as is.
"""

from __future__ import annotations

import logging
import math

import numpy as np


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) linear-interpolation weights, half-pixel centres, edges clamped (PyTorch's convention)."""
  scale = n_in / n_out
  src = (np.arange(n_out) + 0.5) * scale - 0.5
  src = np.clip(src, 0.0, None)
  lo = np.minimum(np.floor(src).astype(int), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in), np.float64)
  m[np.arange(n_out), lo] += 1.0 - frac
  m[np.arange(n_out), hi] += frac
  return m


def resize_grid(grid: np.ndarray, new_hw: tuple[int, int]) -> np.ndarray:
  """(h, w, D) -> (h', w', D) by separable bilinear interpolation (computed in float64)."""
  h, w, _ = grid.shape
  rows, cols = _interp_matrix(h, new_hw[0]), _interp_matrix(w, new_hw[1])
  out = np.einsum("ih,hwd->iwd", rows, grid.astype(np.float64))
  out = np.einsum("jw,iwd->ijd", cols, out)
  return out.astype(grid.dtype)


def resample(posemb: np.ndarray, num_tokens: int, num_prefix: int = 1) -> np.ndarray:
  """(1, num_prefix + g*g, D) -> (1, num_tokens, D); the first `num_prefix` (class) slots are kept."""
  if posemb.shape[1] == num_tokens:
    return posemb
  prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
  g_old, g_new = _side(grid.shape[0]), _side(num_tokens - num_prefix)
  if g_old is None or g_new is None:
    raise ValueError(f"cannot resample a position embedding of {posemb.shape[1]} tokens to {num_tokens}: "
                     "the patch tokens do not form a square grid")
  logging.info("Resampling the position embedding from a %dx%d to a %dx%d grid.", g_old, g_old, g_new, g_new)
  grid = resize_grid(grid.reshape(g_old, g_old, -1), (g_new, g_new)).reshape(1, g_new * g_new, -1)
  return np.concatenate([prefix, grid], axis=1)


def _side(n: int) -> int | None:
  s = int(round(math.sqrt(n)))
  return s if s * s == n else None
