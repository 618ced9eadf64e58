"""Video backbones built from a method's image model class: the same blocks, encoders and method parameters, with
a clip's embedding, positions and head around them. `video_model(kind, model_cls)` returns the subclass (cached,
so equal configs build equal modules); `config.video.model` names the kind.

  frames   DyT's video model (official `video_vision_transformer_IN21K.py`): a clip (B, T, H, W, 3) is folded to B*T
           frames, each embedded with the class token and the 2-D position embedding of the image checkpoint (no
           temporal embedding) and run through the method's encoder; after the final LayerNorm the tokens of all
           frames (class tokens included) are unfolded to (B, T*N, D) and read by an attentive pooling head: one
           learnable query (zeros at init), separate LayerNorms for query, keys and values, a multi-head
           cross-attention whose q/k/v projections have no bias except a learnable q bias and v bias (k bias zero),
           an output projection, then the linear classifier. No residual, no MLP.
  tubelet  VideoMAE's ViT: 3-D patches (tubelet x P x P, a Conv3d), a fixed sinusoidal position table over the
           T/tubelet x g x g tokens, no class token (optionally one, `class_token`: zero-initialised, position zero),
           no final LayerNorm on the tokens (VideoMAE's `norm` is the identity with mean pooling), the mean of the
           patch tokens, `fc_norm` (LayerNorm), then the method's head.

Every parameter of the attentive head lives under `head/` (`head/query_token`, `head/norm_{q,k,v}`, `head/{q,k,v}`,
`head/{q,v}_bias`, `head/proj`, and the classifier `head/kernel`, `head/bias`), so every method's `^head/`
pattern trains it, as the official script does (it trains every parameter the image checkpoint lacks).

Multi-view evaluation: an input (B, V, T, H, W, 3) is folded to B*V clips and the logits are averaged over the V
views; per-clip statistics (1-D arrays of `out`) are averaged over the views too. A per-frame statistic of the
frames model (a (B*T,) array, e.g. DyT's activation rate) becomes per clip: averaged over frames, except `gmacs`,
the per-example compute, which adds up over the frames (and swaps the per-frame linear head that an image
model's count includes for the attentive head's multiply-adds).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_adapt.errors import UserError
from vit_adapt.models import vit

SUMMED_STATS = ("gmacs",)  # per-example statistics that add up over frames; the others are averaged
_LN = 5  # LayerNorm multiply-adds per element, fvcore's count (as the image GMACs formulas)


def attentive_head_macs(tokens: int, width: int, num_classes: int) -> int:
  """Multiply-adds of the attentive pooling head over `tokens` keys (fvcore convention, as the image counts):
  LayerNorms of query, keys and values, the q/k/v projections, QK^T and AV, the output projection and the
  classifier."""
  d = width
  return (_LN * d + 2 * _LN * tokens * d + d * d + 2 * tokens * d * d + 2 * tokens * d + d * d + d * num_classes)


class AttentiveHead(nn.Module):
  """The official `AttentiveBlock` + `query_token` + `head`: (B, M, D) tokens -> (logits (B, C), pooled (B, D))."""
  num_classes: int
  width: int
  num_heads: int
  head_init_std: float = 0.0
  dtype: vit.Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    b, m, d = tokens.shape
    h = self.num_heads
    dh = d // h
    query = self.param("query_token", nn.initializers.zeros, (1, 1, d))
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    dense = lambda name, bias: nn.Dense(d, use_bias=bias, dtype=self.dtype, name=name,
                                        kernel_init=vit.timm_trunc_normal(0.02))
    q_bias = self.param("q_bias", nn.initializers.zeros, (d,))
    v_bias = self.param("v_bias", nn.initializers.zeros, (d,))
    xq = norm("norm_q")(jnp.broadcast_to(query.astype(tokens.dtype), (b, 1, d)))
    q = (dense("q", False)(xq) + q_bias.astype(self.dtype)).reshape(b, 1, h, dh)
    k = dense("k", False)(norm("norm_k")(tokens)).reshape(b, m, h, dh)
    v = (dense("v", False)(norm("norm_v")(tokens)) + v_bias.astype(self.dtype)).reshape(b, m, h, dh)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(dh ** -0.5, q.dtype), k)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    pooled = dense("proj", True)(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, d))
    init = vit.timm_trunc_normal(self.head_init_std) if self.head_init_std > 0 else nn.initializers.zeros
    kernel = self.param("kernel", init, (d, self.num_classes))
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    return pooled @ kernel.astype(self.dtype) + bias.astype(self.dtype), pooled


def _fold(out: dict, n: int, k: int, summed=()) -> dict:
  """Per-example 1-D entries of length n*k -> length n (summed over k for `summed` names, else averaged)."""
  folded = dict(out)
  for name, value in out.items():
    if hasattr(value, "ndim") and value.ndim == 1 and value.shape[0] == n * k and k > 1:
      value = value.reshape(n, k)
      folded[name] = jnp.sum(value, axis=1) if name in summed else jnp.mean(value, axis=1)
  return folded


class ClipModel(vit.VisionTransformer):
  """A video model: `clip(video (B, T, H, W, 3), train)` -> (logits, out); `__call__` adds multi-view inputs."""
  num_frames: int = 8

  def clip(self, video, train: bool, **flags):
    raise NotImplementedError

  def __call__(self, video, train: bool = False, **flags):
    if video.ndim == 6:  # (B, V, T, H, W, 3): test views, logits averaged per video
      b, v = video.shape[:2]
      logits, out = self.clip(video.reshape((b * v,) + video.shape[2:]), train, **flags)
      return jnp.mean(logits.reshape(b, v, -1), axis=1), _fold(out, b, v)
    if video.ndim != 5:
      raise ValueError(f"a video model takes (B, T, H, W, 3) clips or (B, V, T, H, W, 3) views, got {video.shape}")
    return self.clip(video, train, **flags)


class FramesModel(ClipModel):
  """The per-frame ViT with the attentive pooling head (see the module docstring)."""

  def make_head(self):
    self.head = AttentiveHead(self.num_classes, self.width, self.num_heads, self.head_init_std, dtype=self.dtype)

  def clip(self, video, train: bool, **flags):
    b, t = video.shape[:2]
    if t != self.num_frames:
      raise ValueError(f"the model was built for {self.num_frames} frames, the clip has {t}")
    x, out = self.encode(self.embed(video.reshape((b * t,) + video.shape[2:])), train, **flags)
    n, d = x.shape[1:]
    logits, pooled = self.head(x.reshape(b, t * n, d))
    out = _fold(out, b, t, SUMMED_STATS)
    if "gmacs" in out:  # the image count's per-frame linear head -> the clip's attentive head
      out["gmacs"] = out["gmacs"] + (attentive_head_macs(t * n, d, self.num_classes)
                                     - t * d * self.num_classes) / 1e9
    out["pre_logits"] = pooled
    return logits.astype(jnp.float32), out


def sinusoid_table(num_tokens: int, width: int) -> np.ndarray:
  """VideoMAE's `get_sinusoid_encoding_table`: angle pos / 10000^(2 (j // 2) / D), sin on even j, cos on odd."""
  pos = np.arange(num_tokens, dtype=np.float64)[:, None]
  j = np.arange(width)
  angles = pos / np.power(10000.0, 2 * (j // 2) / width)
  table = np.where(j % 2 == 0, np.sin(angles), np.cos(angles))
  return table.astype(np.float32)


class SinusoidalPositions(vit.BlockStack):
  """Adds the fixed sinusoidal table of `num_tokens` patch tokens (a leading class token gets zeros); the final
  LayerNorm is the identity (VideoMAE normalises after pooling, `fc_norm`)."""

  def add_posemb(self, x):
    table = sinusoid_table(self.num_tokens, self.width)
    prefix = x.shape[1] - self.num_tokens
    return x + jnp.asarray(np.pad(table, ((prefix, 0), (0, 0))), x.dtype)[None]

  @property
  def encoder_norm(self):
    return lambda x: x

  @encoder_norm.setter
  def encoder_norm(self, value):
    del value  # BlockStack.setup's LayerNorm: never called, so it has no parameters


@functools.cache
def _sinusoidal_encoder(encoder_cls):
  return type(f"Sinusoidal{encoder_cls.__name__}", (SinusoidalPositions, encoder_cls), {})


class TubeletModel(ClipModel):
  """VideoMAE's tubelet ViT around a method's encoder and head (see the module docstring)."""
  num_frames: int = 16
  tubelet_size: int = 2
  class_token: bool = False

  @property
  def num_patch_tokens(self) -> int:
    return (self.num_frames // self.tubelet_size) * self.num_patches

  def setup(self):
    if self.num_frames % self.tubelet_size:
      raise UserError(f"config.video.num_frames={self.num_frames} is not a multiple of config.video.tubelet_size="
                      f"{self.tubelet_size}.")
    p, t = self.patch_size, self.tubelet_size
    self.embedding = nn.Conv(self.width, (t, p, p), strides=(t, p, p), padding="VALID", dtype=self.dtype)
    if self.class_token:
      self.cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
    self.Transformer = _sinusoidal_encoder(self.encoder_cls)(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads, width=self.width,
        num_tokens=self.num_patch_tokens, dropout=self.dropout, drop_path=self.drop_path, dtype=self.dtype,
        block_cls=self.block_cls, settings=self.settings)
    self.fc_norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)
    self.make_head()

  def embed(self, video):
    x = self.embedding(video.astype(self.dtype))
    x = x.reshape(x.shape[0], -1, self.width)
    if self.class_token:
      cls = jnp.broadcast_to(self.cls.astype(x.dtype), (x.shape[0], 1, self.width))
      x = jnp.concatenate([cls, x], axis=1)
    return x

  def pool_tokens(self, x):
    return jnp.mean(x[:, int(self.class_token):], axis=1)

  def clip(self, video, train: bool, **flags):
    if video.shape[1] != self.num_frames:
      raise ValueError(f"the model was built for {self.num_frames} frames, the clip has {video.shape[1]}")
    x, out = self.encode(self.embed(video), train, **flags)
    pre = self.fc_norm(self.pool_tokens(x))
    out["pre_logits"] = pre
    return self.classify(pre, out, train).astype(jnp.float32), out


KINDS = {"frames": FramesModel, "tubelet": TubeletModel}


@functools.cache
def video_model(kind: str, model_cls: type) -> type:
  """The `kind` video model around `model_cls` (a `VisionTransformer` subclass of a method)."""
  if kind not in KINDS:
    raise UserError(f"config.video.model={kind!r}: use one of {', '.join(KINDS)} ('none' for image tasks).")
  return type(f"{kind.capitalize()}{model_cls.__name__}", (KINDS[kind], model_cls), {})


def video_kwargs(kind: str, video_config) -> dict:
  """Keyword arguments of the `kind` model from `config.video`."""
  kw = {"num_frames": int(video_config.num_frames)}
  if kind == "tubelet":
    kw.update(tubelet_size=int(video_config.tubelet_size), class_token=bool(video_config.class_token))
  return kw
