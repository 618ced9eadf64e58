"""The ViT backbone (Linen) shared by every method.

Parameter names are those of the Google ViT checkpoints after `convert_pre_linen`, so one loader serves every
method:

  cls                                        (1, 1, D)
  embedding/{kernel,bias}                    (P, P, 3, D) HWIO conv stem
  Transformer/posembed_input/pos_embedding   (1, 1 + g*g, D), class slot first
  Transformer/encoderblock_{i}/LayerNorm_0                        before attention
  Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/{query,key,value,out}
  Transformer/encoderblock_{i}/LayerNorm_1                        before the MLP
  Transformer/encoderblock_{i}/MlpBlock_0/{Dense_0,Dense_1}
  Transformer/encoder_norm
  head/{kernel,bias}

How methods hook in (without copying the backbone): every module here is written with `setup()` and exposes its
pieces as methods. A method subclasses `Encoder1DBlock` (adds its own sub-modules in `setup`, rewrites
`__call__` from `attention_branch` / `mlp_branch` / the attention's `qkv` / `attend` / `project_out`) and
subclasses `Encoder` to change what happens between blocks (token selection, a query stream), or `BlockStack` when
its blocks do not run as one pass (MET's exits). Its settings are one frozen dataclass, an `EncoderSettings`
subclass, that the encoder reads and that says which fields each block gets. The frozen sub-modules keep their
names because they are created by the shared `setup`; a method's own parameters live in their own sub-trees
(`adapter`, `router`, `lora`, `exit_k`, ...).

Every model returns `(logits, out)`: `out` is a dict of named intermediates (`block_{i}` outputs, `pre_logits`,
and whatever a method adds: router masks, exit logits, kept indices).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from vit_adapt.errors import UserError

Dtype = Any

# big_vision's naming: variant "B/16" = width of B, patch 16.
_WIDTH = {"mu": 32, "Ti": 192, "S": 384, "M": 512, "B": 768, "L": 1024, "H": 1280, "g": 1408, "G": 1664}
_DEPTH = {"mu": 1, "Ti": 12, "S": 12, "M": 12, "B": 12, "L": 24, "H": 32, "g": 40, "G": 48}
_MLP = {"mu": 128, "Ti": 768, "S": 1536, "M": 2048, "B": 3072, "L": 4096, "H": 5120, "g": 6144, "G": 8192}
_HEADS = {"mu": 2, "Ti": 3, "S": 6, "M": 8, "B": 12, "L": 16, "H": 16, "g": 16, "G": 16}


@dataclasses.dataclass(frozen=True)
class ViTShape:
  """Architecture hyper-parameters of a backbone, decoded from a variant name."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


def decode_variant(variant: str, **overrides) -> ViTShape:
  """`'B/16'` -> ViTShape(768, 12, 3072, 12, 16); `overrides` with value 0/None are ignored."""
  m = re.fullmatch(r"([A-Za-z]+)/(\d+)", variant or "")
  if not m or m.group(1) not in _WIDTH:
    raise UserError(
        f"config.model.variant={variant!r} is not a ViT variant. Use NAME/PATCH with NAME one of "
        f"{sorted(_WIDTH)} (e.g. 'B/16', 'Ti/16', 'L/14').")
  v = m.group(1)
  kw = dict(width=_WIDTH[v], depth=_DEPTH[v], mlp_dim=_MLP[v], num_heads=_HEADS[v], patch_size=int(m.group(2)))
  kw.update({k: int(x) for k, x in overrides.items() if x})
  if kw["width"] % kw["num_heads"]:
    raise UserError(f"width {kw['width']} is not divisible by num_heads {kw['num_heads']} (config.model).")
  return ViTShape(**kw)


def gelu(x):
  """The exact (erf) GELU, x * (1 + erf(x / sqrt 2)) / 2, as PyTorch computes it.

  The checkpoints were trained with the exact GELU; Flax's default tanh approximation breaks parity. Written with
  `lax.erf` rather than `jax.nn.gelu(approximate=False)`, whose erfc form XLA lowers to two rational
  approximations, an exp and a select: on CPU this one is ~4x faster on a ViT-B MLP's activations
  (experiments/profile_cpu.py) and within 1.1e-6 of the float64 GELU, as PyTorch's float32 one is.
  """
  x = jnp.asarray(x)
  return x * (0.5 + 0.5 * lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


def drop_path(x, rate: float, deterministic: bool, rng_module: nn.Module):
  """Stochastic depth on a residual branch (per example)."""
  if deterministic or rate <= 0.0:
    return x
  keep = 1.0 - rate
  rng = rng_module.make_rng("dropout")
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


def timm_trunc_normal(stddev: float):
  """timm's `trunc_normal_(std=s)` (the official DyT and Sparse-Tuning heads): a normal of std s truncated at the
  ABSOLUTE bounds +-2.

  Flax's `truncated_normal(s)` truncates at +-2s and rescales, so its spread is smaller (std ~0.88 s); for s = 0.01
  or 0.02 timm's bounds are never reached, i.e. this is a plain normal of std s, as in the official codes.
  """
  def init(key, shape, dtype=jnp.float32):
    return jax.random.truncated_normal(key, -2.0 / stddev, 2.0 / stddev, shape, jnp.float32).astype(dtype) * stddev
  return init


class MlpBlock(nn.Module):
  """Transformer MLP: Dense_0 -> exact GELU -> Dense_1."""
  mlp_dim: int
  out_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  def setup(self):
    self.Dense_0 = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                            bias_init=nn.initializers.normal(stddev=1e-6))
    self.Dense_1 = nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                            bias_init=nn.initializers.normal(stddev=1e-6))
    self.drop = nn.Dropout(self.dropout)

  def hidden(self, x):
    """First layer + GELU (the part methods may want to modulate)."""
    return gelu(self.Dense_0(x))

  def __call__(self, x, deterministic: bool = True):
    h = self.drop(self.hidden(x), deterministic=deterministic)
    return self.drop(self.Dense_1(h), deterministic=deterministic)


# `jax.nn.dot_product_attention` with implementation=None always takes its XLA path (jax 0.10); cuDNN's fused
# flash attention must be asked for. It applies on NVIDIA GPUs to bfloat16/float16 inputs with head_dim a multiple
# of 8 up to 128 (and a recent cuDNN); elsewhere, or when cuDNN refuses the call, the XLA path runs. Both compute
# softmax(q k^T / sqrt(dh)) v, and the XLA path lowers to the same two dots as the explicit path (same GMACs).
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_XLA_ONLY = threading.local()


@contextlib.contextmanager
def xla_attention():
  """Programs traced inside use XLA's attention even on GPU: the GMACs count (efficiency.measure) needs the
  attention matmuls as dot instructions, which a cuDNN custom-call hides."""
  before = getattr(_XLA_ONLY, "on", False)
  _XLA_ONLY.on = True
  try:
    yield
  finally:
    _XLA_ONLY.on = before


def fused_attention(q, k, v):
  """(B, Nq, H, dh) queries against (B, Nk, H, dh) keys/values -> (B, Nq, H, dh), no probabilities."""
  dh = q.shape[-1]
  # Under `xla_attention` (the GMACs count) neither backend-specific form: the plain op's dots are what is counted.
  backend = None if getattr(_XLA_ONLY, "on", False) else jax.default_backend()
  if backend == "gpu" and q.dtype in _CUDNN_DTYPES and dh % 8 == 0 and dh <= 128:
    try:
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    except (NotImplementedError, RuntimeError, ValueError, TypeError):  # no cuDNN flash attention here
      pass
  if backend == "cpu":
    return cpu_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


# XLA's CPU attention materialises the logits of every (image, head) at once: at ViT-B/16 512 px (1,025 tokens) that
# is 48 MiB per image, written by one dot, read and rewritten by the softmax and read again by the second dot, each
# pass from memory. Run in groups of (image, head) pairs whose logits fit in the cache, the same ops give the same
# values in about half the time there (experiments/bench_cpu_attention.py on the project's 2-core CPU, 1 MiB L2 per
# core, 32 MiB L3: 1.96x at 1 x 1,025 tokens, 1.51x best / 1.10x median at 8 x 197; budgets of 2-8 MiB were the
# fastest, larger ones lose it). The dense 512 px backbone went from 0.65 to 0.81 images/s.
CPU_ATTENTION_GROUP_BYTES = 8 << 20


def _attention_core(q, k, v):
  """(G, Nq, dh), (G, Nk, dh) -> (G, Nq, dh): the XLA formulation of `jax.nn.dot_product_attention` (logits and
  softmax in float32, scaled after the dot)."""
  logits = jnp.einsum("gqd,gkd->gqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(q.shape[-1] ** -0.5)
  probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
  return jnp.einsum("gqk,gkd->gqd", probs, v)


def cpu_attention(q, k, v, group_bytes: int = CPU_ATTENTION_GROUP_BYTES):
  """`fused_attention` on the CPU: (image, head) pairs in groups of at most `group_bytes` of logits, one group at
  a time (`lax.map`); one group (no loop) when everything fits. Same values as the ungrouped program."""
  b, nq, h, dh = q.shape
  nk = k.shape[1]
  pairs = b * h
  fit = max(1, group_bytes // (nq * nk * 4))
  group = max(g for g in range(1, min(fit, pairs) + 1) if pairs % g == 0)  # equal groups: no padding
  heads_first = lambda x: jnp.swapaxes(x, 1, 2).reshape(pairs // group, group, x.shape[1], dh)  # noqa: E731
  qg, kg, vg = heads_first(q), heads_first(k), heads_first(v)
  if group == pairs:
    out = _attention_core(qg[0], kg[0], vg[0])[None]
  else:
    out = jax.lax.map(lambda a: _attention_core(*a), (qg, kg, vg))
  return jnp.swapaxes(out.reshape(b, h, nq, dh), 1, 2)


class Attention(nn.Module):
  """Multi-head self-attention in the Google checkpoint layout (query/key/value kernels (D, H, dh)).

  Split into `qkv`, `attend` and `project_out` so methods can add LoRA deltas to the projections, read the
  attention probabilities (Sparse-Tuning), read keys/values (SynQT) or run queries against given keys/values.
  `attend` runs the fused op (cuDNN flash attention on GPU) unless the probabilities or a mask are asked for.
  """
  num_heads: int
  width: int
  dtype: Dtype = jnp.float32

  def setup(self):
    dh = self.width // self.num_heads
    dense = lambda: nn.DenseGeneral((self.num_heads, dh), dtype=self.dtype,
                                    kernel_init=nn.initializers.xavier_uniform())
    self.query, self.key, self.value = dense(), dense(), dense()
    self.out = nn.DenseGeneral(self.width, axis=(-2, -1), dtype=self.dtype,
                               kernel_init=nn.initializers.xavier_uniform())

  def qkv(self, x):
    """(B, N, D) -> q, k, v each (B, N, H, dh)."""
    return self.query(x), self.key(x), self.value(x)

  def attend(self, q, k, v, mask=None, return_probs: bool = False):
    """Scaled dot-product attention. Returns (out (B, Nq, H, dh), probs (B, H, Nq, Nk) or None).

    `mask` (broadcastable to (B, H, Nq, Nk), True = may attend) lets methods hide keys (VPT deep, DyT). Without a
    mask and without the probabilities, the fused op runs (`fused_attention`: cuDNN flash attention on GPU);
    otherwise the explicit softmax path, which also gives the probabilities (Sparse-Tuning's token scores).
    """
    if mask is None and not return_probs:
      return fused_attention(q, k, v), None
    return self.explicit_attention(q, k, v, mask)

  def explicit_attention(self, q, k, v, mask=None):
    """softmax(q k^T / sqrt(dh)) v with the probabilities: -> (out (B, Nq, H, dh), probs (B, H, Nq, Nk))."""
    depth = q.shape[-1]
    q = q / jnp.sqrt(depth).astype(q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v), probs

  def project_out(self, o):
    return self.out(o)

  def __call__(self, x, mask=None, return_probs: bool = False):
    q, k, v = self.qkv(x)
    o, probs = self.attend(q, k, v, mask, return_probs)
    y = self.project_out(o)
    return (y, probs) if return_probs else y

  def query_only(self, xq, k, v):
    """Queries `xq` (B, T, D) attend to given keys/values of other tokens; nothing flows back to those tokens."""
    o, _ = self.attend(self.query(xq), k, v)
    return self.project_out(o)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + Attn(LN0(x)), then x + MLP(LN1(x)).

  Subclasses add parameters in `setup` (after `super().setup()`) and rewrite `__call__`; the frozen
  sub-modules below keep their checkpoint names.
  """
  mlp_dim: int
  num_heads: int
  width: int
  dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  # The methods an encoder calls on its blocks, which `config.model.remat` rematerialises (models/remat.py).
  remat_methods: ClassVar[tuple[str, ...]] = ("__call__",)

  def setup(self):
    self.LayerNorm_0 = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)
    self.MultiHeadDotProductAttention_0 = Attention(self.num_heads, self.width, dtype=self.dtype)
    self.LayerNorm_1 = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)
    self.MlpBlock_0 = MlpBlock(self.mlp_dim, self.width, dropout=self.dropout, dtype=self.dtype)
    self.attn_drop = nn.Dropout(self.dropout)

  @property
  def attn(self) -> Attention:
    return self.MultiHeadDotProductAttention_0

  def attention_branch(self, x, deterministic: bool = True, mask=None, return_probs: bool = False):
    """Attn(LN0(x)) (with dropout), optionally with the attention probabilities."""
    y, probs = self.attn(self.LayerNorm_0(x), mask=mask, return_probs=True) if return_probs else (
        self.attn(self.LayerNorm_0(x), mask=mask), None)
    y = self.attn_drop(y, deterministic=deterministic)
    return (y, probs) if return_probs else y

  def mlp_branch(self, x, deterministic: bool = True):
    """MLP(LN1(x))."""
    return self.MlpBlock_0(self.LayerNorm_1(x), deterministic=deterministic)

  def residual(self, x, branch, deterministic: bool):
    return x + drop_path(branch, self.drop_path, deterministic, self)

  def __call__(self, x, deterministic: bool = True):
    x = self.residual(x, self.attention_branch(x, deterministic), deterministic)
    return self.residual(x, self.mlp_branch(x, deterministic), deterministic)


@dataclasses.dataclass(frozen=True)
class EncoderSettings:
  """A method's settings of the encoder and its blocks; this base has none (the plain backbone).

  A method subclasses it (also frozen) with its settings as fields. Module attributes must be hashable and
  compare by value (Linen modules are dataclasses compared field by field, and MET's per-model cost cache keys
  on the model's fields): a frozen dataclass is both, so two models built from equal settings are equal modules.
  """

  def block_fields(self, i: int) -> dict[str, Any]:
    """Fields of block i beyond the shared shape ones. By default every setting is a field of every block (the
    settings are named as the block's fields); methods override it for per-block values (Sparse-Tuning) or
    settings that are the encoder's own (VPT)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class BlockStack(nn.Module):
  """Position embedding, the stack of blocks and the final LayerNorm: the encoder's parts, with no pass over them.

  Block i is `block_cls` built with the shared shape fields plus `settings.block_fields(i)`. `Encoder` adds the
  plain pass. A method whose blocks do not run as one pass (MET runs them in stages, an exit between two stages)
  subclasses this directly and gives its encoder the entry points it really has.
  """
  depth: int
  mlp_dim: int
  num_heads: int
  width: int
  num_tokens: int  # 1 + g*g: the class slot is part of the position embedding (original Google layout)
  dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  block_cls: Callable[..., nn.Module] = Encoder1DBlock
  settings: EncoderSettings = EncoderSettings()

  def setup(self):
    self.posembed_input = PositionEmbedding(self.num_tokens, self.width)
    blocks = []
    for i in range(self.depth):
      # Stochastic depth grows linearly with depth, as in timm/big_vision.
      dp = self.drop_path * i / max(self.depth - 1, 1)
      blk = self.block_cls(mlp_dim=self.mlp_dim, num_heads=self.num_heads, width=self.width,
                           dropout=self.dropout, drop_path=dp, dtype=self.dtype, **self.settings.block_fields(i))
      setattr(self, f"encoderblock_{i}", blk)  # attribute name = parameter name
      blocks.append(blk)
    self.blocks = blocks
    self.encoder_norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)

  def add_posemb(self, x):
    return self.posembed_input(x)


class Encoder(BlockStack):
  """The plain pass: position embedding, every block in turn, final LayerNorm.

  Subclasses override `__call__` to change what happens between blocks, reusing `add_posemb`, `blocks` and
  `encoder_norm`; keyword arguments beyond `train` are theirs (`VisionTransformer.__call__` forwards them).
  """

  def __call__(self, x, train: bool = False):
    out = {}
    x = self.add_posemb(x)
    for i, blk in enumerate(self.blocks):
      x = blk(x, deterministic=not train)
      out[f"block_{i}"] = x
    return self.encoder_norm(x), out


class PositionEmbedding(nn.Module):
  """Learned position embedding (1, num_tokens, D) including the class slot."""
  num_tokens: int
  width: int

  @nn.compact
  def __call__(self, x):
    pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, self.num_tokens, self.width))
    if x.shape[1] != self.num_tokens:
      raise ValueError(f"position embedding has {self.num_tokens} tokens, input has {x.shape[1]}")
    return x + pe.astype(x.dtype)


class VisionTransformer(nn.Module):
  """ViT classifier returning `(logits, out)`.

  Methods set `encoder_cls`, `block_cls` and `settings` (their `EncoderSettings`), and subclass this to override
  `encode` or `classify`. Keyword arguments of `__call__` beyond `train` go to the encoder (DyT's `complete`), so
  a method with an extra switch does not copy the forward pass.
  """
  num_classes: int
  width: int = 768
  depth: int = 12
  mlp_dim: int = 3072
  num_heads: int = 12
  patch_size: int = 16
  image_size: int = 224
  pool: str = "tok"  # 'tok' (class token) or 'gap' (mean of patch tokens)
  dropout: float = 0.0
  drop_path: float = 0.0
  head_init_std: float = 0.0  # 0 -> zero head (big_vision fine-tuning default); >0 -> timm_trunc_normal
  dtype: Dtype = jnp.float32
  encoder_cls: Callable[..., nn.Module] = Encoder
  block_cls: Callable[..., nn.Module] = Encoder1DBlock
  settings: EncoderSettings = EncoderSettings()

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid * self.grid

  def setup(self):
    self.embedding = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2,
                             padding="VALID", dtype=self.dtype)
    self.cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
    self.Transformer = self.encoder_cls(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads, width=self.width,
        num_tokens=1 + self.num_patches, dropout=self.dropout, drop_path=self.drop_path, dtype=self.dtype,
        block_cls=self.block_cls, settings=self.settings)
    self.make_head()

  def make_head(self):
    init = timm_trunc_normal(self.head_init_std) if self.head_init_std > 0 else nn.initializers.zeros
    self.head = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype)

  def embed(self, images):
    """images (B, H, W, 3) -> tokens (B, 1 + g*g, D) with the class token first (no position embedding)."""
    x = self.embedding(images.astype(self.dtype))
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    cls = jnp.broadcast_to(self.cls.astype(x.dtype), (b, 1, d))
    return jnp.concatenate([cls, x], axis=1)

  def encode(self, x, train: bool, **flags):
    return self.Transformer(x, train=train, **flags)

  def pool_tokens(self, x):
    return x[:, 0] if self.pool == "tok" else jnp.mean(x[:, 1:], axis=1)

  def classify(self, pre_logits, out, train: bool):
    return self.head(pre_logits)

  def __call__(self, images, train: bool = False, **flags):
    """-> (logits (B, C) float32, out); `flags` are the method's switches of its encoder (see the class)."""
    x, out = self.encode(self.embed(images), train, **flags)
    pre = self.pool_tokens(x)
    out["pre_logits"] = pre
    logits = self.classify(pre, out, train)
    return logits.astype(jnp.float32), out


# Compute dtypes of `config.model.dtype`. 'auto' is bfloat16 on the backends with fast bfloat16 matmuls (GPU
# tensor cores, TPU MXUs) and float32 elsewhere, so CPU runs keep float32 results; parameters and optimizer state
# are float32 in every case (the modules' param_dtype).
_COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_BFLOAT16_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def resolve_dtype(name: str, backend: str | None = None) -> str:
  """`config.model.dtype` -> 'float32' or 'bfloat16'; 'auto' by `backend` (default: `jax.default_backend()`)."""
  if name == "auto":
    backend = (backend or jax.default_backend()).lower()
    return "bfloat16" if backend in _BFLOAT16_BACKENDS else "float32"
  if name not in _COMPUTE_DTYPES:
    raise UserError(f"config.model.dtype={name!r}: use 'auto' (bfloat16 on GPU/TPU, float32 on CPU), "
                    "'float32' or 'bfloat16'.")
  return name


def backbone_kwargs(model_config, num_classes: int) -> dict:
  """Keyword arguments of `VisionTransformer` from `config.model` (shared by every method)."""
  shape = decode_variant(model_config.variant, width=model_config.get("width", 0),
                         depth=model_config.get("depth", 0), mlp_dim=model_config.get("mlp_dim", 0),
                         num_heads=model_config.get("num_heads", 0))
  if model_config.image_size % shape.patch_size:
    raise UserError(f"config.model.image_size={model_config.image_size} is not a multiple of the patch size "
                    f"{shape.patch_size} of variant {model_config.variant!r}.")
  dtype = _COMPUTE_DTYPES[resolve_dtype(model_config.get("dtype", "auto"))]
  return dict(num_classes=num_classes, width=shape.width, depth=shape.depth, mlp_dim=shape.mlp_dim,
              num_heads=shape.num_heads, patch_size=shape.patch_size, image_size=model_config.image_size,
              pool=model_config.get("pool", "tok"), dropout=model_config.get("dropout", 0.0),
              drop_path=model_config.get("drop_path", 0.0), head_init_std=model_config.get("head_init_std", 0.0),
              dtype=dtype)


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
