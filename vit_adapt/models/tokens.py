"""Static-shape token operations shared by the token-dynamic methods (DyT, Sparse-Tuning, MET).

Everything here keeps shapes static under `jax.jit`: token budgets are Python ints, and data-dependent amounts
of work go through a small set of precompiled capacities selected on device with `lax.switch`, so compilation is
bounded and nothing ever has a dynamic shape. No Python loop runs over tokens or examples.

Conventions: `x` is a token tensor (B, N, D); a per-image index array `idx` is (B, K) int32 into the N axis;
a boolean `mask` (B, N) marks tokens that take part ("active"/"kept").

Three families:

* per-image top-k: `topk_indices`, `gather_tokens`, `scatter_add_tokens`, `indices_to_mask`, `fuse_rest`
  (the EViT / Sparse-Tuning "keep the k best, fuse the rest into one token" pattern);
* batch-flattened compaction: `compact_indices` packs the active rows of a whole (flattened) batch into a static
  capacity; `gather_rows` / `scatter_rows` move rows in and out (padding slots point past the end and are dropped);
* bucketed capacities: `bucket_capacities`, `choose_bucket`, `switch_on_count` and `apply_on_active_rows`, which
  run a row-wise function only on the active rows of a batch, through at most 8 precompiled capacities per
  `lax.switch` (the result equals running the function on every row and masking).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MAX_BUCKETS = 8  # compiled branches per lax.switch: bounded compile time and program size


# ---------------------------------------------------------------------------------------------------------
# Per-image top-k keep, gather, scatter, fuse.

def topk_indices(scores, k: int, *, sort_by_position: bool = False):
  """Indices (B, k) of the k highest `scores` (B, N) per image (descending score, or ascending position).

  Sorting by position keeps the original token order, which some methods need for reproducibility of the
  reference (e.g. EViT-style pruning keeps tokens in order).
  """
  _, idx = jax.lax.top_k(scores, k)
  if sort_by_position:
    idx = jnp.sort(idx, axis=-1)
  return idx.astype(jnp.int32)


def gather_tokens(x, idx):
  """x (B, N, D), idx (B, K) -> (B, K, D)."""
  return jnp.take_along_axis(x, idx[..., None].astype(jnp.int32), axis=1)


def scatter_add_tokens(x, idx, y):
  """Adds y (B, K, D) into x (B, N, D) at positions idx (B, K) (duplicates accumulate); one vectorised scatter."""
  b = jnp.arange(x.shape[0], dtype=jnp.int32)[:, None]
  return x.at[b, idx].add(y.astype(x.dtype))


def scatter_tokens(x, idx, y):
  """Writes y (B, K, D) into x (B, N, D) at positions idx (B, K) (indices must be distinct per image)."""
  b = jnp.arange(x.shape[0], dtype=jnp.int32)[:, None]
  return x.at[b, idx].set(y.astype(x.dtype))


def indices_to_mask(idx, n: int):
  """idx (B, K) -> boolean mask (B, n), True at the listed positions."""
  b = jnp.arange(idx.shape[0], dtype=jnp.int32)[:, None]
  return jnp.zeros((idx.shape[0], n), bool).at[b, idx].set(True)


def fuse_rest(x, weights, keep_mask, *, normalize: bool = True, eps: float = 1e-6):
  """One token (B, 1, D) summarising the NON-kept tokens: sum_n w_n x_n over tokens with keep_mask False.

  `weights` (B, N) are non-negative importances (e.g. class-token attention); with `normalize` they are
  renormalised over the non-kept tokens (EViT's fused token). If every token is kept the result is zero.
  """
  w = jnp.where(keep_mask, 0.0, weights.astype(jnp.float32))
  if normalize:
    w = w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), eps)
  return jnp.einsum("bn,bnd->bd", w.astype(x.dtype), x)[:, None, :]


def first_active_indices(mask, k: int):
  """Per image, indices (B, k) of the active tokens first (in position order), then inactive ones as padding.

  Returns (idx, valid (B, k) bool). Used when a per-image computation must run on a variable number of tokens
  within a static capacity k (e.g. queries of active tokens only); padded slots are computed and discarded.
  """
  n = mask.shape[1]
  pos = jnp.arange(n, dtype=jnp.int32)
  score = jnp.where(mask, 2 * n - pos, n - pos)  # active first, each group in position order
  _, idx = jax.lax.top_k(score, k)
  return idx.astype(jnp.int32), jnp.take_along_axis(mask, idx, axis=1)


# ---------------------------------------------------------------------------------------------------------
# Batch-flattened compaction: pack the active rows of (R, D) into a static capacity.

def compact_indices(mask, capacity: int):
  """Row indices (capacity,) of the True entries of a flat mask (R,), in order; unused slots hold R.

  R is past the end: `gather_rows` clips it (the padding computes on a real row and is thrown away) and
  `scatter_rows` drops it. Active rows beyond `capacity` are not listed (callers choose capacity >= count).
  """
  r = mask.shape[0]
  slot = jnp.cumsum(mask.astype(jnp.int32)) - 1
  slot = jnp.where(mask, slot, capacity)  # inactive rows write out of bounds: dropped
  return jnp.full((capacity,), r, jnp.int32).at[slot].set(jnp.arange(r, dtype=jnp.int32), mode="drop")


def gather_rows(rows, idx):
  """rows (R, D), idx (C,) with values in [0, R] -> (C, D); index R (padding) reads row R-1."""
  return jnp.take(rows, idx, axis=0, mode="clip")


def scatter_rows(out, idx, values):
  """out (R, D) with out[idx] = values; padding indices (>= R) are dropped."""
  return out.at[idx].set(values.astype(out.dtype), mode="drop")


# ---------------------------------------------------------------------------------------------------------
# Bucketed capacities.

def bucket_capacities(total: int, num_buckets: int = MAX_BUCKETS, *, multiple: int = 1,
                      include_zero: bool = False) -> tuple[int, ...]:
  """Evenly spaced capacities up to `total` (the last one always equals `total`, so every count fits).

  `multiple` rounds each capacity up (e.g. to 8 for friendlier matmul shapes); `include_zero` makes the first
  bucket 0 (a branch that computes nothing). At most MAX_BUCKETS values, ascending, distinct.
  """
  if not 1 <= num_buckets <= MAX_BUCKETS:
    raise ValueError(f"num_buckets must be in [1, {MAX_BUCKETS}], got {num_buckets}")
  start = 0 if include_zero else 1
  caps = {min(total, int(math.ceil(i * total / num_buckets / multiple)) * multiple)
          for i in range(start, start + num_buckets)}
  if not include_zero:
    caps.add(total)
  return tuple(sorted(caps))


def choose_bucket(count, capacities: Sequence[int]):
  """Index (int32 scalar, on device) of the smallest capacity >= count (the last bucket if none is)."""
  caps = jnp.asarray(np.asarray(capacities, np.int32))
  return jnp.minimum(jnp.sum(caps < count), len(capacities) - 1).astype(jnp.int32)


def switch_on_count(count, capacities: Sequence[int], branch: Callable, *operands):
  """lax.switch over `branch(capacity=c, *operands)` for c in capacities, choosing the smallest c >= count."""
  if len(capacities) > MAX_BUCKETS:
    raise ValueError(f"at most {MAX_BUCKETS} capacities, got {len(capacities)}")
  branches = [functools.partial(branch, capacity=int(c)) for c in capacities]
  if len(branches) == 1:
    return branches[0](*operands)
  return jax.lax.switch(choose_bucket(count, capacities), branches, *operands)


def apply_on_active_rows(fn: Callable, rows, mask, *, num_buckets: int = MAX_BUCKETS, fine: bool = True,
                         multiple: int = 8):
  """fn applied only to the active rows of rows (R, D); inactive rows of the result are zero.

  Equals `jnp.where(mask[:, None], fn(rows), 0)` for a row-wise `fn`, computing fn on a static number of rows:

  * one level (`fine=False`): the smallest of `num_buckets` evenly spaced capacities that holds the count;
  * two levels (`fine=True`, default): a coarse part (the largest multiple of R/num_buckets not above the count,
    including 0) plus a fine part (the smallest multiple of R/num_buckets^2 covering the remainder), each chosen
    by its own `lax.switch` over at most 8 capacities, so at most about R/64 padded rows are computed instead of
    up to R/8. Both parts are exact: padding slots read a real row and their results are dropped.

  Returns (result (R, D_out), rows_computed int32 scalar).
  """
  r = rows.shape[0]
  count = jnp.sum(mask.astype(jnp.int32))
  out_shape = jax.eval_shape(fn, rows[:1])
  out = jnp.zeros((r,) + out_shape.shape[1:], out_shape.dtype)

  if not fine:
    def one(rows, out, capacity):
      idx = compact_indices(mask, capacity)
      return scatter_rows(out, idx, fn(gather_rows(rows, idx))), jnp.int32(capacity)
    caps = bucket_capacities(r, num_buckets, multiple=multiple)
    return switch_on_count(count, caps, one, rows, out)

  step = int(math.ceil(r / num_buckets))
  fine_step = int(math.ceil(step / num_buckets))
  coarse_caps = tuple(i * step for i in range(num_buckets) if i * step < r)
  fine_caps = tuple(sorted({min(r, int(math.ceil((i + 1) * fine_step / multiple)) * multiple)
                            for i in range(num_buckets)}))
  # Slots beyond R (padding) let the fine part slice past the last coarse row without clamping.
  idx_all = jnp.concatenate([compact_indices(mask, r), jnp.full((fine_caps[-1],), r, jnp.int32)])
  coarse_bucket = jnp.clip(count // step, 0, len(coarse_caps) - 1)
  start = jnp.asarray(np.asarray(coarse_caps, np.int32))[coarse_bucket]

  def coarse(rows, out, capacity):
    if capacity == 0:
      return out
    idx = idx_all[:capacity]
    return scatter_rows(out, idx, fn(gather_rows(rows, idx)))

  def fine_part(rows, out, capacity):
    idx = jax.lax.dynamic_slice(idx_all, (start,), (capacity,))
    return scatter_rows(out, idx, fn(gather_rows(rows, idx))), jnp.int32(capacity)

  out = jax.lax.switch(coarse_bucket, [functools.partial(coarse, capacity=c) for c in coarse_caps], rows, out)
  out, fine_rows = switch_on_count(count - start, fine_caps, fine_part, rows, out)
  return out, start + fine_rows
