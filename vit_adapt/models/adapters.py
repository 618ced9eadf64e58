"""Small trainable modules shared by the methods: the bottleneck adapter and LoRA."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vit_adapt.models.vit import gelu

ACTIVATIONS: dict[str, Callable] = {"relu": nn.relu, "gelu": gelu}


def torch_linear_kernel_init(key, shape, dtype=jnp.float32):
  """PyTorch's default Linear weight init, kaiming_uniform(a=sqrt(5)) = uniform(+-1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(shape[0])
  return nn.initializers.uniform(2 * bound)(key, shape, dtype) - bound


class Adapter(nn.Module):
  """Bottleneck adapter  a(x) = scale * (W_up Dropout(act(W_down x + b_down)) + b_up).

  The AdaptFormer / DyT form: the scale multiplies the whole up-projection output, bias included; the
  up-projection starts at zero so the adapter is an exact no-op at initialisation.
  """
  bottleneck: int
  out_dim: int
  scale: float = 1.0
  dropout: float = 0.0
  activation: str = "relu"
  dtype: Any = jnp.float32

  def setup(self):
    self.down = nn.Dense(self.bottleneck, kernel_init=torch_linear_kernel_init, dtype=self.dtype)
    self.up = nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros, dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, x, deterministic: bool = True):
    h = self.drop(ACTIVATIONS[self.activation](self.down(x)), deterministic=deterministic)
    return self.up(h) * self.scale


class LoRA(nn.Module):
  """Low-rank update  (alpha / rank) * x A B  with B = 0 at start, reshaped to the heads of a projection."""
  rank: int
  features: tuple  # (num_heads, head_dim) of the projection it updates
  alpha: float = 8.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    a = self.param("A", torch_linear_kernel_init, (x.shape[-1], self.rank))
    b = self.param("B", nn.initializers.zeros, (self.rank, int(np.prod(self.features))))
    y = (x.astype(self.dtype) @ a.astype(self.dtype)) @ b.astype(self.dtype)
    return (y * (self.alpha / self.rank)).reshape(x.shape[:-1] + tuple(self.features))
