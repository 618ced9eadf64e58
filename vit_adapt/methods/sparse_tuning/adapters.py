"""Sparse-Tuning's trainable modules: the two Dense Adapters and the BatchNorm classifier head.

* `PaperDenseAdapter` - the adapter of the paper's equations (default, `config.method.dense_adapter='paper'`):

    a_N = W_up ReLU(W_down x_N + W_prev1 S(a_{N-1}) + W_prev3 S(a_{N-3}))

  where x_N is the adapter's input (the stream entering the FFN, as in the released code and AdaptFormer) and
  S(a) are earlier adapter outputs passed through the same token selection/fusion as the stream since then
  (done by the encoder). The paper gives neither the bottleneck, the scale nor the initialisation; our choices,
  documented: r = 64 (the released adapter's outer width), scale 1, PyTorch-default (kaiming-uniform)
  down-projections, a zero up-projection (the adapter is an exact no-op at step 0), and one bias on the whole
  bottleneck (on W_down; biases on W_prev* would be redundant with it) plus the up-projection's bias.

* `ReleasedDenseAdapter` - the multi-branch adapter the official code actually runs (`'released'`), with its
  names (`down1, down2, up1, down3, up2`) so checkpoints map one to one:

    r = ReLU(W_d1 x + b)  (D -> 64);  s = W_d2 r + b  (64 -> 32);  u = W_u1 s + b  (32 -> 64);
    t = W_d3 [s ; u] + b  (96 -> 64);  a = W_u2 (t + r) + b  (64 -> D)

  Initialisation quirk of the release: the module declares zero up-projections, but the ViT's global weight
  init runs afterwards and overwrites EVERY linear layer with truncated-normal std 0.02, zero bias - so the
  adapters are non-zero at step 0. We reproduce what runs (`timm_trunc_normal(0.02)` everywhere).

* `TorchBatchNorm` - the head's non-affine BatchNorm with PyTorch's semantics (see its docstring).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_adapt.models.adapters import torch_linear_kernel_init
from vit_adapt.models.vit import timm_trunc_normal


class PaperDenseAdapter(nn.Module):
  """a = W_up ReLU(W_down x + sum_j W_prev_j p_j); `prev_offsets` name the earlier outputs p_j (1 -> a_{N-1}, ...)."""
  out_dim: int
  bottleneck: int = 64
  prev_offsets: tuple[int, ...] = ()
  dtype: Any = jnp.float32

  def setup(self):
    self.down = nn.Dense(self.bottleneck, kernel_init=torch_linear_kernel_init, dtype=self.dtype)
    for o in self.prev_offsets:  # named by offset: down_prev1 reads a_{N-1}, down_prev3 reads a_{N-3}
      setattr(self, f"down_prev{o}", nn.Dense(self.bottleneck, use_bias=False,
                                              kernel_init=torch_linear_kernel_init, dtype=self.dtype))
    self.up = nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros, dtype=self.dtype)

  def __call__(self, x, prev=()):
    if len(prev) != len(self.prev_offsets):
      raise ValueError(f"expected {len(self.prev_offsets)} earlier adapter outputs, got {len(prev)}")
    h = self.down(x)
    for o, p in zip(self.prev_offsets, prev):
      h = h + getattr(self, f"down_prev{o}")(p)
    return self.up(nn.relu(h))


class ReleasedDenseAdapter(nn.Module):
  """The official code's five-linear adapter (input width D; inner widths 64/32 fixed as released)."""
  out_dim: int
  dtype: Any = jnp.float32

  def setup(self):
    dense = lambda n: nn.Dense(n, kernel_init=timm_trunc_normal(0.02), bias_init=nn.initializers.zeros,
                               dtype=self.dtype)
    self.down1, self.down2, self.up1 = dense(64), dense(32), dense(64)
    self.down3, self.up2 = dense(64), dense(self.out_dim)

  def __call__(self, x, prev=()):
    if prev:
      raise ValueError("the released adapter reads only its own input")
    r = nn.relu(self.down1(x))
    s = self.down2(r)
    u = self.up1(s)
    t = self.down3(jnp.concatenate([s, u], axis=-1))
    return self.up2(t + r)


ADAPTERS = {"paper": PaperDenseAdapter, "released": ReleasedDenseAdapter}


class TorchBatchNorm(nn.Module):
  """Non-affine BatchNorm1d over the batch axis with PyTorch's semantics (the official head's `BatchNorm1d`).

  Training normalises with the batch mean and BIASED batch variance and, when the `batch_stats` collection is
  mutable, updates the running statistics as PyTorch does: running = (1 - m) * running + m * batch with m = 0.1
  (PyTorch's momentum; Flax's convention would call it 0.9) and the UNBIASED batch variance n / (n - 1) * var
  (Flax's own BatchNorm uses the biased one). Evaluation normalises with the running statistics. Statistics are
  float32. Under a data-parallel `jit` the batch axis is global, so the statistics are those of the global batch.
  """
  momentum: float = 0.1
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x, train: bool):
    d = x.shape[-1]
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((d,), jnp.float32))
    var = self.variable("batch_stats", "var", lambda: jnp.ones((d,), jnp.float32))
    xf = x.astype(jnp.float32)
    if train:
      n = xf.shape[0]
      if n < 2:
        raise ValueError(f"BatchNorm in training needs more than one example per batch, got {n}")
      m = jnp.mean(xf, axis=0)
      v = jnp.mean(jnp.square(xf - m), axis=0)
      if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
        mean.value = (1.0 - self.momentum) * mean.value + self.momentum * m
        var.value = (1.0 - self.momentum) * var.value + self.momentum * v * (n / (n - 1))
    else:
      m, v = mean.value, var.value
    return ((xf - m) * jax.lax.rsqrt(v + self.epsilon)).astype(x.dtype)
