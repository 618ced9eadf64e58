"""SynQT (Zhang et al., ECCV 2024): disentangled query synthesis; the backbone is never back-propagated.

The frozen ViT runs its ordinary forward on the image tokens. Per layer i, a trainable Query Synthesis Module
(QSM) makes T query tokens from learnable queries and the previous layer's query feature; the queries then pass
through block i in "query-only" mode: the block's own LayerNorms, query/output projections and MLP, attending to
block i's keys/values of the image tokens. The image tokens never see the queries. A head combines the 1 + 3L
per-layer query features (37 for ViT-B) with a shared refinement adapter and an instance-conditioned weighted
mean, then LayerNorm + linear.

The model is two separate computations (this is what keeps training memory small):

  features = image_features(images)   frozen, under `stop_gradient`: per-layer keys/values (or the hidden
                                      states they come from) of the image tokens; nothing is recorded for
                                      backward except what the query path reads (the keys/values).
  logits   = query_stream(features)   the only part that depends on trainable parameters.

`__call__` accepts either images (B, H, W, 3) or a dict of precomputed features (`{'kv': (B, L, 2, N, D)}` or
`{'hidden': (B, L, N, D)}`), which is how cached-feature training (`synqt/cache.py`) feeds the model.

Numerics (spec traps): SynQT's own LayerNorms use eps 1e-5, the backbone's 1e-6; GELU is exact (erf);
`ResidualAdapter(z) = z + Drop(fc2(Drop(GELU(fc1 z))))` has the residual INSIDE, so e.g. the head computes
`g = f + LN(f) + mlp(LN(f))`. `synqt_head/head_norm` starts as a copy of the backbone's final LayerNorm
(`post_load`), as the official code ties them.

Training noise (distribution-level, not RNG-level, parity with the official code): QSM dropouts 0.1 (inside the
adapters, on the QSM attention probabilities and output, and on the synthesised queries), the backbone's
stochastic depth (`config.model.drop_path`, linear in depth) on the query path's attention/MLP branches and, when
features are not cached and `image_drop_path` is set, on the image path too; head drop-path 0.3 on features 1..
When features are cached the image path is deterministic by construction (the cache holds one forward).

Parameters (trainable, own sub-trees): `qsm/queries` (L, T, D) uniform(-1, 1), `qsm/feat_scale`,
`qsm/layer_{i}/...` (prompt adapter 48, QSM attention with rank-8 adapters, MLP adapter 48, four LN, two scales),
`synqt_head/...` (adapter 48, out_norm, weighting Dense (3L outputs), head_norm), `head`. The official unused
tensors (`pre_norm.*`, `out_combine.weight`) are not created.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_adapt.errors import UserError
from vit_adapt.methods import base
from vit_adapt.methods.synqt import cache
from vit_adapt.methods.synqt import official  # noqa: F401  (registers the official-synqt checkpoint source)
from vit_adapt.models import vit
from vit_adapt.models.adapters import torch_linear_kernel_init

Dtype = Any

# SynQT's own LayerNorms use PyTorch's default eps; the backbone's (vit.py) use 1e-6.
SYNQT_LN_EPS = 1e-5
FEATURE_KINDS = ("kv", "hidden")


def torch_linear_bias_init(fan_in: int):
  """PyTorch's default Linear bias init, uniform(+-1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def constant_init(value: float):
  return lambda key, shape, dtype=jnp.float32: jnp.full(shape, value, dtype)


class ResidualAdapter(nn.Module):
  """z + Drop(fc2(Drop(GELU(fc1 z)))): SynQT's adapter, residual inside, PyTorch Linear init (fc2 not zero)."""
  hidden: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, deterministic: bool = True):
    d = z.shape[-1]
    h = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=torch_linear_kernel_init,
                 bias_init=torch_linear_bias_init(d), name="fc1")(z)
    h = nn.Dropout(self.dropout)(vit.gelu(h), deterministic=deterministic)
    y = nn.Dense(d, dtype=self.dtype, kernel_init=torch_linear_kernel_init,
                 bias_init=torch_linear_bias_init(self.hidden), name="fc2")(h)
    return z + nn.Dropout(self.dropout)(y, deterministic=deterministic)


def layer_norm(name=None):
  return nn.LayerNorm(epsilon=SYNQT_LN_EPS, name=name)


class QSMLayer(nn.Module):
  """One layer of the Query Synthesis Module: (B, T, D) seed queries -> (B, T, D) synthesised queries.

    p <- Adapter48(p);  n = LN(p)
    p <- p + attn_scale * Drop(Adapter8_o(Drop(softmax(q k^T / sqrt(D))) v)),  q/k/v = Adapter8(LN_q(n)/LN_kv(n))
    p <- p + ffn_scale * Adapter48(LN(p));  return Drop(p)
  The attention is single-head among the T queries only.
  """
  attn_scale: float
  ffn_scale: float
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  def setup(self):
    self.prompt_adapter = ResidualAdapter(48, self.dropout, dtype=self.dtype)
    self.norm1, self.norm2 = layer_norm(), layer_norm()
    self.q_norm, self.kv_norm = layer_norm(), layer_norm()
    self.q_proj = ResidualAdapter(8, 0.0, dtype=self.dtype)
    self.k_proj = ResidualAdapter(8, 0.0, dtype=self.dtype)
    self.v_proj = ResidualAdapter(8, 0.0, dtype=self.dtype)
    self.out_proj = ResidualAdapter(8, 0.0, dtype=self.dtype)
    self.mlp = ResidualAdapter(48, self.dropout, dtype=self.dtype)
    self.attn_scale_param = self.param("attn_scale", constant_init(self.attn_scale), ())
    self.ffn_scale_param = self.param("ffn_scale", constant_init(self.ffn_scale), ())
    self.drop = nn.Dropout(self.dropout)

  def attention(self, n, deterministic: bool):
    q = self.q_proj(self.q_norm(n))
    kn = self.kv_norm(n)
    k, v = self.k_proj(kn), self.v_proj(kn)
    logits = jnp.einsum("btd,bsd->bts", q, k) * (q.shape[-1] ** -0.5)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    probs = self.drop(probs, deterministic=deterministic)
    o = self.out_proj(jnp.einsum("bts,bsd->btd", probs, v))
    return self.drop(o, deterministic=deterministic)

  def __call__(self, p, deterministic: bool = True):
    p = self.prompt_adapter(p, deterministic)
    p = p + self.attn_scale_param.astype(p.dtype) * self.attention(self.norm1(p), deterministic)
    p = p + self.ffn_scale_param.astype(p.dtype) * self.mlp(self.norm2(p), deterministic)
    return self.drop(p, deterministic=deterministic)


class QuerySynthesis(nn.Module):
  """The per-layer learnable queries, the feature feedback scale and the L `QSMLayer`s (sub-tree `qsm`)."""
  depth: int
  num_queries: int
  width: int
  feat_scale: float
  attn_scale: float
  ffn_scale: float
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  def setup(self):
    self.queries = self.param("queries", lambda k, s: jax.random.uniform(k, s, jnp.float32, -1.0, 1.0),
                              (self.depth, self.num_queries, self.width))
    self.feat_scale_param = self.param("feat_scale", constant_init(self.feat_scale), ())
    layers = []
    for i in range(self.depth):
      layer = QSMLayer(self.attn_scale, self.ffn_scale, self.dropout, dtype=self.dtype)
      setattr(self, f"layer_{i}", layer)  # attribute name = parameter name
      layers.append(layer)
    self.layers = layers

  def __call__(self, i: int, prev, batch: int, deterministic: bool = True):
    """Queries of layer i (B, T, D); `prev` (B, 1, D) is layer i-1's query feature (None for i = 0)."""
    p = jnp.broadcast_to(self.queries[i].astype(self.dtype), (batch, self.num_queries, self.width))
    if prev is not None:
      p = p + self.feat_scale_param.astype(self.dtype) * prev
    return self.layers[i](p, deterministic)


class SynQTHead(nn.Module):
  """(B, F, D) per-layer features -> (B, D) normalised pooled feature (sub-tree `synqt_head`).

    g_j = f_j + Adapter48(LN(f_j))   (shared; drop-path on g_j, j > 0, in training)
    w   = [1, tanh(Drop(GELU(W g_0 + b)))];  z = mean_j w_j g_j;  return LN_head(z)
  """
  num_features: int
  width: int
  dropout: float = 0.1
  drop_path: float = 0.3
  dtype: Dtype = jnp.float32

  def setup(self):
    self.adapter = ResidualAdapter(48, self.dropout, dtype=self.dtype)
    self.out_norm = layer_norm()
    self.weight = nn.Dense(self.num_features - 1, dtype=self.dtype, kernel_init=torch_linear_kernel_init,
                           bias_init=torch_linear_bias_init(self.width))
    self.weight_drop = nn.Dropout(self.dropout)
    self.head_norm = layer_norm()

  def __call__(self, feats, deterministic: bool = True):
    g = feats + self.adapter(self.out_norm(feats), deterministic)
    if not deterministic and self.drop_path > 0:
      # timm's DropPath on each (B, D) feature j > 0 separately: one Bernoulli per (example, feature).
      keep = 1.0 - self.drop_path
      rest = g[:, 1:]
      mask = jax.random.bernoulli(self.make_rng("dropout"), keep, rest.shape[:2] + (1,))
      g = jnp.concatenate([g[:, :1], jnp.where(mask, rest / keep, 0.0).astype(g.dtype)], axis=1)
    w = jnp.tanh(self.weight_drop(vit.gelu(self.weight(g[:, 0])), deterministic=deterministic))
    w = jnp.concatenate([jnp.ones_like(w[:, :1]), w], axis=1)
    z = jnp.mean(w[..., None] * g, axis=1)
    return self.head_norm(z)


class SynQTViT(vit.VisionTransformer):
  """The frozen `VisionTransformer` (standard encoder and blocks, names unchanged) + `qsm` + `synqt_head`."""
  num_queries: int = 1
  feat_scale: float = 0.1
  attn_scale: float = 0.1
  ffn_scale: float = 0.1
  qsm_dropout: float = 0.1
  head_drop_path: float = 0.3
  image_drop_path: bool = True  # stochastic depth on the image path in (non-cached) training, as the official code
  feature_kind: str = "kv"      # what `image_features` returns: per-layer keys/values or hidden states

  def setup(self):
    super().setup()
    self.qsm = QuerySynthesis(self.depth, self.num_queries, self.width, self.feat_scale, self.attn_scale,
                              self.ffn_scale, self.qsm_dropout, dtype=self.dtype)
    self.synqt_head = SynQTHead(1 + 3 * self.depth, self.width, self.qsm_dropout, self.head_drop_path,
                                dtype=self.dtype)

  @property
  def num_features(self) -> int:
    return 1 + 3 * self.depth

  # -------------------------------------------------------------------------------------------------------
  # Frozen image path.

  def _image_layers(self, images, train: bool):
    """Yields (block, x_i) for i = 0..L-1, x_i = the image tokens entering block i (B, N, D)."""
    det = not (train and self.image_drop_path)
    x = self.Transformer.add_posemb(self.embed(images))
    blocks = self.Transformer.blocks
    for i, blk in enumerate(blocks):
      yield blk, x
      if i + 1 < len(blocks):  # block L-1's image output is never read
        x = blk(x, deterministic=det)

  def _kv(self, blk, x):
    y = blk.LayerNorm_0(x)
    return blk.attn.key(y), blk.attn.value(y)

  def image_kv(self, images, train: bool = False):
    """Per-layer (k, v), each (B, N, H, dh), of the image tokens; no gradient flows into or out of them."""
    # Block i's k/v are recomputed by `_kv` although `blk(x)` computes them too: K/V projections are 2 N D^2
    # of the block's ~12 N D^2 + 2 N^2 D MACs, and keeping the block whole keeps this code small.
    return [jax.lax.stop_gradient(self._kv(blk, x)) for blk, x in self._image_layers(images, train)]

  def image_features(self, images, feature_kind: str | None = None):
    """Evaluation-mode features for caching: {'kv': (B, L, 2, N, D)} or {'hidden': (B, L, N, D)}."""
    kind = feature_kind or self.feature_kind
    layers = list(self._image_layers(images, False))
    if kind == "hidden":
      return {"hidden": jax.lax.stop_gradient(jnp.stack([x for _, x in layers], axis=1))}
    b, n = layers[0][1].shape[:2]
    kv = [jnp.stack(self._kv(blk, x), axis=1).reshape(b, 2, n, self.width) for blk, x in layers]
    return {"kv": jax.lax.stop_gradient(jnp.stack(kv, axis=1))}

  def _kv_from_features(self, feats: dict):
    """Cached features -> per-layer (k, v) (B, N, H, dh) in the compute dtype."""
    blocks = self.Transformer.blocks
    heads, dh = self.num_heads, self.width // self.num_heads
    if set(feats) == {"kv"}:
      kv = feats["kv"].astype(self.dtype)
      b, l, _, n, _ = kv.shape
      kv = kv.reshape(b, l, 2, n, heads, dh)
      out = [(kv[:, i, 0], kv[:, i, 1]) for i in range(l)]
    elif set(feats) == {"hidden"}:
      h = feats["hidden"].astype(self.dtype)
      out = [self._kv(blk, h[:, i]) for i, blk in enumerate(blocks)]
    else:
      raise ValueError(f"SynQT features must be {{'kv': ...}} or {{'hidden': ...}}, got keys {sorted(feats)}")
    if len(out) != len(blocks):
      raise ValueError(f"features hold {len(out)} layers, the backbone has {len(blocks)}")
    return [jax.lax.stop_gradient(kv) for kv in out]

  # -------------------------------------------------------------------------------------------------------
  # Trainable query path.

  def query_stream(self, kv_layers, train: bool):
    """Per-layer (k, v) of the image tokens -> (logits, out). The only part that depends on trainable params."""
    det = not train
    b = kv_layers[0][0].shape[0]
    prev, hs, atts, ffns = None, [], [], []
    for i, (blk, (k, v)) in enumerate(zip(self.Transformer.blocks, kv_layers)):
      p = self.qsm(i, prev, b, det)
      # Query-only pass through frozen block i: its LN0, W_q, softmax against the image keys, values, W_o.
      h = vit.drop_path(blk.attn.query_only(blk.LayerNorm_0(p), k, v), blk.drop_path, det, self)
      p = p + h
      f = vit.drop_path(blk.mlp_branch(p, det), blk.drop_path, det, self)
      p = p + f
      if self.num_queries > 1:
        p, h, f = (jnp.mean(t, axis=1, keepdims=True) for t in (p, h, f))
      hs.append(p), atts.append(h), ffns.append(f)
      prev = p
    feats = jnp.concatenate([hs[-1]] + hs + atts + ffns, axis=1)  # (B, 1 + 3L, D)
    pre = self.synqt_head(feats, det)
    logits = self.head(pre)
    return logits.astype(jnp.float32), {"pre_logits": pre}

  def as_features(self, inputs) -> dict | None:
    """Recognises precomputed features: a dict, or a flat array of the exact shape of one kind (a cached
    batch's 'features'); None for images."""
    if isinstance(inputs, dict):
      return inputs
    n = 1 + self.num_patches
    if inputs.shape[1:] == (self.depth, 2, n, self.width):
      return {"kv": inputs}
    if inputs.shape[1:] == (self.depth, n, self.width):
      return {"hidden": inputs}
    return None

  def __call__(self, inputs, train: bool = False):
    """`inputs`: images (B, H, W, 3), or features (B, L, 2, N, D) keys/values / (B, L, N, D) hidden states
    (as an array or a {'kv'|'hidden': array} dict), e.g. from the feature cache."""
    feats = self.as_features(inputs)
    if feats is not None:
      kv_layers = self._kv_from_features(feats)
    else:
      kv_layers = self.image_kv(inputs, train)
      if self.is_initializing():
        # The final LayerNorm is unused by SynQT but stays in the tree: it is part of every backbone
        # checkpoint, and `post_load` copies it into `synqt_head/head_norm`.
        self.Transformer.encoder_norm(jnp.zeros((1, self.width), self.dtype))
    return self.query_stream(kv_layers, train)


# ----------------------------------------------------------------------------------------------------------
# Registration.

def defaults():
  return ml_collections.ConfigDict({
      "name": "synqt",
      "num_queries": 1,        # T, per task (configs/synqt_vtab.py)
      "feat_scale": 0.1,       # initial feature-feedback scale, per task
      "attn_scale": 0.1,       # initial QSM attention scale, per task
      "ffn_scale": 0.1,        # initial QSM MLP scale, per task
      "dropout": 0.1,          # QSM / head adapter and weighting dropout
      "head_drop_path": 0.3,   # drop-path on the head's features 1..3L
      "image_drop_path": True,  # backbone stochastic depth on the image path (non-cached training only)
      # Cached-feature training (synqt/cache.py): '' (off), 'kv' (per-layer keys/values: fastest steps) or
      # 'hidden' (per-layer hidden states: half the storage, K/V projections recomputed every step).
      "cache_features": "",
      "cache_dtype": "bfloat16",  # storage dtype of the cache: 'bfloat16' or 'float32'
      "cache_dir": "",            # '' = <workdir>/synqt_cache
  })


def model_kwargs(c, backbone) -> dict[str, Any]:
  if c.num_queries < 1:
    raise UserError(f"config.method.num_queries={c.num_queries}: SynQT needs at least one query per layer.")
  if c.cache_features not in ("",) + FEATURE_KINDS:
    raise UserError(f"config.method.cache_features={c.cache_features!r}: use '' (off), 'kv' or 'hidden'.")
  return dict(num_queries=int(c.num_queries), feat_scale=float(c.feat_scale), attn_scale=float(c.attn_scale),
              ffn_scale=float(c.ffn_scale), qsm_dropout=float(c.dropout), head_drop_path=float(c.head_drop_path),
              image_drop_path=bool(c.image_drop_path), feature_kind=c.cache_features or "kv")


def post_load(params, config):
  """Initialise `synqt_head/head_norm` from the (loaded) backbone's final LayerNorm, as the official code does."""
  params = dict(params)
  head = dict(params["synqt_head"])
  head["head_norm"] = jax.tree_util.tree_map(jnp.array, params["Transformer"]["encoder_norm"])
  params["synqt_head"] = head
  return params


TRAINABLE = (r"^qsm/", r"^synqt_head/", r"^head/")

SYNQT = base.register(base.Method(
    name="synqt", model_cls=SynQTViT, trainable=TRAINABLE, defaults=defaults,
    model_kwargs=model_kwargs, post_load=post_load, doc=__doc__,
    # The three scales are the initial values of trainable scalars (`qsm/feat_scale`, ...).
    init_fields=("feat_scale", "attn_scale", "ffn_scale"),
    # Runs whose frozen features agree (same backbone, data, and these fields) can share one cache.
    feature_cache=base.FeatureCache(
        iterator=functools.partial(cache.feature_cache, trainable=TRAINABLE),
        enabled=lambda config: bool(config.method.cache_features),
        key_fields=("cache_features", "cache_dtype"), dir_field="cache_dir")))
