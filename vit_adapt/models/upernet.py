"""Dense-prediction head of a plain ViT: the BEiT-style feature pyramid, the UperNet decode head and the
auxiliary FCN head (BEiT / DyT segmentation, mmseg 0.11's `UPerHead` and `FCNHead` semantics, NHWC).

  pyramid      block outputs at stride 16 (patch tokens as maps) -> strides 4, 8, 16, 32:
               stride 4  = 2x2 transposed conv -> GELU -> 2x2 transposed conv   (`fpn1`)
               stride 8  = 2x2 transposed conv                                  (`fpn2`)
               stride 16 = identity, stride 32 = 2x2 max-pool
  UperNet      pyramid pooling (adaptive average pools 1, 2, 3, 6 of the coarsest level, 1x1 conv, bilinear
               back, concatenated with it, 3x3 conv), 1x1 laterals, top-down sum, 3x3 FPN convs, every level
               upsampled to stride 4 and fused by a 3x3 conv, dropout, 1x1 classifier
  FCN          3x3 conv (256 channels) on the stride-16 level, dropout, 1x1 classifier

Every conv except the classifiers is conv (no bias) -> BatchNorm -> ReLU ("ConvModule"); BatchNorm keeps its
running statistics in the `batch_stats` collection (PyTorch's momentum 0.1 = Flax's 0.9, epsilon 1e-5).
Bilinear resizing is PyTorch's `align_corners=False` (half-pixel centres; all resizes here enlarge, where
`jax.image.resize` renormalises the edge weights exactly as PyTorch clamps its source index).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def resize_bilinear(x, size: tuple[int, int]):
  """(B, H, W, C) -> (B, h, w, C), PyTorch `interpolate(mode='bilinear', align_corners=False)` when enlarging."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear", antialias=False).astype(x.dtype)


def adaptive_avg_pool(x, bins: int):
  """PyTorch `AdaptiveAvgPool2d(bins)`: bin i covers [floor(i H / n), ceil((i + 1) H / n))."""
  h, w = x.shape[1:3]
  rows = []
  for i in range(bins):
    r0, r1 = (i * h) // bins, math.ceil((i + 1) * h / bins)
    cols = []
    for j in range(bins):
      c0, c1 = (j * w) // bins, math.ceil((j + 1) * w / bins)
      cols.append(jnp.mean(x[:, r0:r1, c0:c1], axis=(1, 2)))
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)


class ConvTranspose2x(nn.Module):
  """2x2 transposed convolution, stride 2 (non-overlapping): out[2i + a, 2j + b] = x[i, j] @ kernel[a, b] + bias.
  `kernel` (2, 2, C_in, C_out) is PyTorch's weight (C_in, C_out, 2, 2) transposed (2, 3, 0, 1)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    bound = 1.0 / math.sqrt(c * 4)
    kernel = self.param("kernel", nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform"),
                        (2, 2, c, self.features))
    bias = self.param("bias", lambda k, s: jax.random.uniform(k, s, minval=-bound, maxval=bound), (self.features,))
    y = jnp.einsum("bhwc,xyco->bhxwyo", x.astype(self.dtype), kernel.astype(self.dtype))
    b, h, _, w, _, o = y.shape
    return y.reshape(b, 2 * h, 2 * w, o) + bias.astype(self.dtype)


class ConvBNReLU(nn.Module):
  """mmseg's ConvModule: conv without bias -> BatchNorm -> ReLU."""
  features: int
  kernel: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    pad = self.kernel // 2
    x = nn.Conv(self.features, (self.kernel,) * 2, padding=[(pad, pad)] * 2, use_bias=False, dtype=self.dtype,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


class FeaturePyramid(nn.Module):
  """Four (B, g, g, D) maps at stride 16 -> maps at strides 4, 8, 16, 32 (BEiT's fpn1..fpn4)."""
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array]):
    f1, f2, f3, f4 = feats
    x1 = ConvTranspose2x(self.width, self.dtype, name="fpn1_0")(f1)
    x1 = ConvTranspose2x(self.width, self.dtype, name="fpn1_1")(nn.gelu(x1, approximate=False))
    x2 = ConvTranspose2x(self.width, self.dtype, name="fpn2")(f2)
    x4 = nn.max_pool(f4, (2, 2), strides=(2, 2))
    return [x1, x2, f3, x4]


class UperHead(nn.Module):
  """UperNet over a 4-level pyramid -> logits (B, H/4, W/4, num_classes) at the finest level's resolution."""
  num_classes: int
  channels: int = 768
  pool_scales: tuple[int, ...] = (1, 2, 3, 6)
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array], train: bool):
    conv = lambda k, name: ConvBNReLU(self.channels, k, self.dtype, name=name)
    top = inputs[-1]
    pooled = [top]
    for s in self.pool_scales:
      p = conv(1, f"psp_{s}")(adaptive_avg_pool(top, s), train)
      pooled.append(resize_bilinear(p, top.shape[1:3]))
    laterals = [conv(1, f"lateral_{i}")(x, train) for i, x in enumerate(inputs[:-1])]
    laterals.append(conv(3, "psp_bottleneck")(jnp.concatenate(pooled, axis=-1), train))
    for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse maps added to the next finer lateral
      laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
    outs = [conv(3, f"fpn_{i}")(laterals[i], train) for i in range(len(laterals) - 1)] + [laterals[-1]]
    size = outs[0].shape[1:3]
    fused = conv(3, "fpn_bottleneck")(jnp.concatenate([resize_bilinear(o, size) for o in outs], axis=-1), train)
    fused = nn.Dropout(self.dropout)(fused, deterministic=not train)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="cls")(fused)


class FCNHead(nn.Module):
  """mmseg's FCNHead with one conv and no input concatenation (the auxiliary head)."""
  num_classes: int
  channels: int = 256
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = ConvBNReLU(self.channels, 3, self.dtype, name="conv_0")(x, train)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="cls")(x)


class SegmentationHead(nn.Module):
  """Pyramid + UperNet (+ the auxiliary FCN head on the stride-16 level, computed in training only).

  -> (logits at stride 4, auxiliary logits at stride 16 or None)."""
  num_classes: int
  width: int
  channels: int = 768
  aux_channels: int = 256
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  def setup(self):
    self.pyramid = FeaturePyramid(self.width, self.dtype)
    self.decode = UperHead(self.num_classes, self.channels, dropout=self.dropout, dtype=self.dtype)
    self.auxiliary = FCNHead(self.num_classes, self.aux_channels, dropout=self.dropout, dtype=self.dtype)

  def __call__(self, feats: Sequence[jax.Array], train: bool, with_aux: bool = False):
    levels = self.pyramid(feats)
    logits = self.decode(levels, train)
    aux = self.auxiliary(levels[2], train) if with_aux else None
    return logits, aux
