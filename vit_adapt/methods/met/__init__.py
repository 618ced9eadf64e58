"""MET — Multiple-Exit Tuning (Liu, Zhu, Li, Huang, 2024, arXiv 2409.13999), the first public implementation.

Only the abstract of the paper is known; every choice it leaves open is a config field whose default is the
design proposal in docs/met.md ("ours" below marks such a choice).

Exits. After blocks `exits` (1-based, default (4, 6, 8, 10, 12); ours) the class token is read by an exit:
  exit k < K-1:  logits_k = head_k(LN_k(cls))            parameters `exit_k/{norm,head}`
  exit K-1:      logits   = head(encoder_norm(cls))        the backbone's own final norm and head
The last exit must sit after the last block, so a backbone checkpoint (and a fine-tuned head) loads unchanged.

E-adapters (ours: the cheapest reading of "shared projections + exit-specific transformation"). Every block l has
an AdaptFormer-style adapter parallel to its MLP, reading LN1(x) (the MLP's input), bottleneck r = 8, GELU:
  patch tokens:  delta   = s   * (W_up act(W_down h + b_down) + b_up)
  class token:   delta_0 = s_k * (W_up M_k act(W_down h_0 + b_down) + b_up)
W_down, W_up (`encoderblock_l/eadapter/{down,up}`) are ONE parameter each per block, shared by all exits; M_k
(r x r, identity at init) and s_k (scalar, `scale` at init) are `exit_k/{M,s}` and belong to the exit that block l
feeds (the first exit at or after l). s is the fixed `scale`; W_up starts at zero, so adapters start as no-ops.

`exit_tokens='per_exit'` (ours: the spec's alternative reading, "a token per exit"): every exit k has its own
class token, the backbone's class token (embedding + position 0) plus a learned offset `exit_k/token` (zero at
init), carrying exit k's M_k, s_k in EVERY block up to exit k; exit k reads its own token. The stream entering
stage k is [token_k .. token_{K-2}, token_{K-1}, patches]: the last exit's token takes the backbone class token's
place, and attention is masked so that patches attend to it and to patches only, and every class token to itself
and the patches. So the patch stream and each exit are unaffected by the other exits' tokens, an exit's token is
dropped once its exit has read it, and the early-exit pass stays exact. Each token costs a token's share of every
block up to its exit (counted in `exit_gmacs`). With zero offsets and equal M_k, s_k it computes what the
default computes (tests/test_met_exit_tokens.py).

Loss (`met/loss.py`): sum_k w_k CE(logits_k, y) + graph_weight * sum_{k<K-1} G_k (label-graph regulariser on the
L2-normalised early-exit features). The model returns every exit's logits in `out['exit_logits']` (K, B, C).

Inference (`train=False`): `inference='early_exit'` (default) with calibrated `thresholds` (one per early exit, from
`python -m vit_adapt.met_calibrate`) stops each example at the first exit whose confidence reaches its threshold
and really skips the remaining blocks for it (`met/exit.py`: the still-running examples are compacted to the front
of the batch and continue with a capacity from a few precompiled buckets via `lax.switch`). 'dense_select' runs
every exit and picks the same exit (the reference semantics); 'last' (or no thresholds) always uses the last exit.
`out['exit']` is the exit taken and `out['gmacs']` its cost, from the compiled per-stage costs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from vit_adapt.errors import UserError
from vit_adapt.methods import base
from vit_adapt.methods.met import exit as met_exit
from vit_adapt.methods.met import knob
from vit_adapt.methods.met import loss as met_loss
from vit_adapt.models import vit
from vit_adapt.models.adapters import ACTIVATIONS, torch_linear_kernel_init

INFERENCE_MODES = ("early_exit", "dense_select", "last")
# What is exit-specific in an E-adapter: 'shared' = one class token whose M_k, s_k change with the stage (ours,
# the cheapest reading); 'per_exit' = one class token per exit (module docstring).
EXIT_TOKENS = ("shared", "per_exit")


class EAdapter(nn.Module):
  """The shared W_down / W_up of one block; the exit-specific M_k and s_k come in as arguments."""
  bottleneck: int
  out_dim: int
  scale: float = 0.1
  dropout: float = 0.0
  activation: str = "gelu"
  dtype: Any = jnp.float32

  def setup(self):
    self.down = nn.Dense(self.bottleneck, kernel_init=torch_linear_kernel_init, dtype=self.dtype)
    self.up = nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros, dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, h, m, s_cls, deterministic: bool = True):
    """h (B, N, D) normalised tokens (class tokens first) -> delta (B, N, D). One class token: m (r, r), s_cls
    scalar; n class tokens (`exit_tokens='per_exit'`): m (n, r, r), s_cls (n,), token i with m[i], s_cls[i]."""
    g = ACTIVATIONS[self.activation](self.down(h))
    n = 1 if m.ndim == 2 else m.shape[0]
    if m.ndim == 2:
      cls = g[:, :1] @ m.astype(g.dtype)
    else:
      cls = jnp.einsum("bnr,nrs->bns", g[:, :n], m.astype(g.dtype))
    g = jnp.concatenate([cls, g[:, n:]], axis=1)
    u = self.up(self.drop(g, deterministic=deterministic))
    s = jnp.concatenate([jnp.reshape(s_cls, (n,)).astype(u.dtype),
                         jnp.full((u.shape[1] - n,), self.scale, u.dtype)])
    return u * s[None, :, None]


class METBlock(vit.Encoder1DBlock):
  """Pre-LN block with an E-adapter parallel to the MLP: x + MLP(LN1(x)) + E-adapter(LN1(x))."""
  bottleneck: int = 8
  adapter_scale: float = 0.1
  adapter_dropout: float = 0.0
  activation: str = "gelu"

  def setup(self):
    super().setup()
    self.eadapter = EAdapter(self.bottleneck, self.width, scale=self.adapter_scale,
                             dropout=self.adapter_dropout, activation=self.activation, dtype=self.dtype)

  def __call__(self, x, m, s_cls, deterministic: bool = True, mask=None):
    x = self.residual(x, self.attention_branch(x, deterministic, mask=mask), deterministic)
    h = self.LayerNorm_1(x)
    mlp = self.MlpBlock_0(h, deterministic=deterministic)
    return self.residual(x, mlp, deterministic) + self.eadapter(h, m, s_cls, deterministic=deterministic)


@dataclasses.dataclass(frozen=True)
class METSettings(vit.EncoderSettings):
  """The fields of every `METBlock`; the exits read `bottleneck` (M_k is r x r) and `adapter_scale` (s_k's init)."""
  bottleneck: int
  adapter_scale: float
  adapter_dropout: float
  activation: str


class METEncoder(vit.BlockStack):
  """The backbone's blocks, run stage by stage (the blocks between two exits, each stage with its exit's M_k, s_k):
  its entry point is `run_blocks`, not a whole pass, because an exit head reads the stream between stages (see
  METViT, whose `full` and early-exit passes drive the stages)."""

  def run_blocks(self, x, start: int, stop: int, m, s_cls, deterministic: bool = True, mask=None):
    for blk in self.blocks[start:stop]:
      x = blk(x, m, s_cls, deterministic=deterministic, mask=mask)
    return x


class Exit(nn.Module):
  """Exit-specific parameters: M_k, s_k of the E-adapters of its stage (or of its own token), (early exits)
  LN_k + head_k, and with `token_width` its class token's learned offset (token_width,), zero at init."""
  num_classes: int
  bottleneck: int
  scale: float
  has_head: bool = True
  head_init_std: float = 0.0
  token_width: int = 0
  dtype: Any = jnp.float32

  def setup(self):
    self.M = self.param("M", lambda k, s: jnp.eye(s[0], dtype=jnp.float32), (self.bottleneck, self.bottleneck))
    self.s = self.param("s", nn.initializers.constant(self.scale), ())
    if self.token_width:
      self.token = self.param("token", nn.initializers.zeros, (self.token_width,))
    if self.has_head:
      self.norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)
      init = (vit.timm_trunc_normal(self.head_init_std) if self.head_init_std > 0
              else nn.initializers.zeros)
      self.head = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype)

  def adapter_params(self):
    return self.M, self.s

  def __call__(self, cls):
    y = self.norm(cls)
    return self.head(y), y


class METViT(vit.VisionTransformer):
  """ViT with exits; `__call__(images, train)` -> (logits, out). See the module docstring. `settings` is a
  `METSettings`."""
  exits: tuple = (4, 6, 8, 10, 12)  # 1-based blocks after which an exit reads the class token
  confidence: str = "max_softmax"
  thresholds: tuple = ()  # one per early exit (K-1); empty: not calibrated
  inference: str = "early_exit"
  num_buckets: int = 8
  exit_tokens: str = "shared"  # one of EXIT_TOKENS
  exit_gmacs: tuple = ()  # cumulative cost of stopping at each exit (G per example); filled by model_kwargs

  @property
  def num_exits(self) -> int:
    return len(self.exits)

  @property
  def per_exit_tokens(self) -> bool:
    return self.exit_tokens == "per_exit"

  def extra_tokens(self, k: int) -> int:
    """Early exits' class tokens in front of the stream entering stage k (those of exits k..K-2)."""
    return self.num_exits - 1 - k if self.per_exit_tokens else 0

  def setup(self):
    super().setup()
    exits = []
    for k in range(self.num_exits):
      e = Exit(self.num_classes, self.settings.bottleneck, self.settings.adapter_scale,
               has_head=k < self.num_exits - 1, head_init_std=self.head_init_std,
               token_width=self.width if self.per_exit_tokens else 0, dtype=self.dtype)
      setattr(self, f"exit_{k}", e)  # attribute name = parameter sub-tree name
      exits.append(e)
    self.exit_modules = exits

  # -- the pieces the full pass, the early-exit pass and the per-stage cost compilation share ---------------

  def stem(self, images):
    """images -> tokens (B, N, D) with position embeddings, ready for stage 0 ('per_exit': N + K-1 tokens, the
    exits' class tokens first)."""
    x = self.Transformer.add_posemb(self.embed(images))
    if not self.per_exit_tokens:
      return x
    cls = x[:, :1]
    toks = [cls + e.token.astype(x.dtype) for e in self.exit_modules]
    return jnp.concatenate([*toks, x[:, 1:]], axis=1)

  def stage_mask(self, k: int, n: int):
    """'per_exit': (1, 1, n, n) attention mask of stage k (True = may attend); patches see the last exit's token
    and the patches, every class token itself and the patches. None for the shared token (no mask)."""
    if not self.per_exit_tokens:
      return None
    e = self.extra_tokens(k)  # the last exit's token sits at position e
    q = jnp.arange(n)[:, None]
    key = jnp.arange(n)[None, :]
    allowed = (key > e) | (key == q) | ((q > e) & (key == e))
    return allowed[None, None]

  def stage(self, x, k: int, train: bool = False):
    """Runs the blocks between exit k-1 and exit k: with exit k's M_k, s_k ('shared'), or ('per_exit') each
    remaining exit's token with its own M_j, s_j."""
    start = self.exits[k - 1] if k else 0
    if self.per_exit_tokens:
      params = [e.adapter_params() for e in self.exit_modules[k:]]
      m, s = jnp.stack([p[0] for p in params]), jnp.stack([p[1] for p in params])
    else:
      m, s = self.exit_modules[k].adapter_params()
    return self.Transformer.run_blocks(x, start, self.exits[k], m, s, deterministic=not train,
                                       mask=self.stage_mask(k, x.shape[1]))

  def after_exit(self, x, k: int):
    """The stream the next stage gets: 'per_exit' drops the token exit k has read (nothing attends to it)."""
    return x[:, 1:] if self.per_exit_tokens and k < self.num_exits - 1 else x

  def exit_head(self, x, k: int):
    """tokens after stage k -> (logits_k (B, C) float32, exit feature (B, D): the normalised class token)."""
    cls = self.pool_tokens(x)
    if k < self.num_exits - 1:
      logits, feat = self.exit_modules[k](cls)
    else:
      feat = self.Transformer.encoder_norm(cls)
      logits = self.head(feat)
    return logits.astype(jnp.float32), feat

  def stage_and_exit(self, x, k: int):
    """One inference stage (what the early-exit pass runs per bucket; compiled alone for the cost table)."""
    x = self.stage(x, k)
    return self.after_exit(x, k), self.exit_head(x, k)[0]

  # -- forward -------------------------------------------------------------------------------------------

  def full(self, images, train: bool):
    x = self.stem(images)
    logits, feats = [], []
    for k in range(self.num_exits):
      x = self.stage(x, k, train)
      lg, f = self.exit_head(x, k)
      logits.append(lg)
      feats.append(f)
      x = self.after_exit(x, k)
    out = {"exit_logits": jnp.stack(logits), "exit_features": jnp.stack(feats), "pre_logits": feats[-1]}
    return logits[-1], out

  def early_exit(self, images, thresholds=None):
    """The pass that skips work; `thresholds` (K-1,) may be traced (one compiled program for a whole sweep)."""
    return met_exit.early_exit_forward(self, images, self.thresholds if thresholds is None else thresholds)

  def __call__(self, images, train: bool = False):
    mode = self.inference if self.thresholds else "last"
    if train or self.is_initializing() or mode == "last":
      logits, out = self.full(images, train)
      out["exit"] = jnp.full((images.shape[0],), self.num_exits - 1, jnp.int32)
    elif mode == "dense_select":
      _, out = self.full(images, train)
      logits, out["exit"] = met_exit.select_exit(out["exit_logits"], self.thresholds, self.confidence)
    else:
      logits, exit_idx = self.early_exit(images)
      out = {"exit": exit_idx}
    if self.exit_gmacs:
      out["gmacs"] = jnp.asarray(self.exit_gmacs, jnp.float32)[out["exit"]]
    return logits, out


# ----------------------------------------------------------------------------------------------------------
# Registration.

def defaults():
  return ml_collections.ConfigDict({
      "name": "met",
      "exits": (4, 6, 8, 10, 12),   # 1-based blocks; the last must be the last block (ours)
      "bottleneck": 8,               # E-adapter r (ours)
      "scale": 0.1,                  # s of the patch tokens and initial s_k (ours, AdaptFormer's value)
      "dropout": 0.0,                # after the E-adapter activation
      "activation": "gelu",
      "exit_loss_weights": (),       # CE weight per exit; () = all 1 (ours)
      "graph_weight": 0.1,           # lambda (ours; 0.01-1 sensible)
      "graph_guard": "none",         # collapse guard: 'none' | 'contrast' | 'relational' (met/loss.py)
      "graph_mu": 0.5,               # weight of the 'contrast' guard
      "confidence": "max_softmax",   # 'max_softmax' | 'entropy' (confidence = -entropy)
      "thresholds": (),              # per early exit, written by vit_adapt.met_calibrate
      "calibration": "",             # how the thresholds were obtained (written by met_calibrate)
      "inference": "early_exit",     # 'early_exit' | 'dense_select' | 'last'
      "num_buckets": 8,              # precompiled batch capacities per stage in the early-exit pass
      "exit_tokens": "shared",       # E-adapter reading: 'shared' class token | 'per_exit' (a token per exit)
  })


def model_kwargs(c, backbone) -> dict:
  depth = backbone["depth"]
  exits = tuple(int(e) for e in c.exits)
  if not exits or list(exits) != sorted(set(exits)) or exits[0] < 1 or exits[-1] != depth:
    raise UserError(
        f"config.method.exits={tuple(c.exits)!r}: give strictly increasing 1-based block numbers ending at the "
        f"last block ({depth}), e.g. (4, 6, 8, 10, 12) for 12 blocks. For a shallower network set "
        "config.model.depth.")
  if backbone.get("pool", "tok") != "tok":
    raise UserError("MET reads the class token at every exit: set config.model.pool='tok'.")
  if c.confidence not in met_exit.CONFIDENCES:
    raise UserError(f"config.method.confidence={c.confidence!r}: use one of {sorted(met_exit.CONFIDENCES)}.")
  if c.exit_tokens not in EXIT_TOKENS:
    raise UserError(f"config.method.exit_tokens={c.exit_tokens!r}: use one of {EXIT_TOKENS}.")
  if c.inference not in INFERENCE_MODES:
    raise UserError(f"config.method.inference={c.inference!r}: use one of {INFERENCE_MODES}.")
  if c.activation not in ACTIVATIONS:
    raise UserError(f"config.method.activation={c.activation!r}: use one of {sorted(ACTIVATIONS)}.")
  if c.thresholds and len(c.thresholds) != len(exits) - 1:
    raise UserError(f"config.method.thresholds has {len(c.thresholds)} values but there are {len(exits) - 1} "
                    "early exits: re-run `python -m vit_adapt.met_calibrate` for this model.")
  if c.exit_loss_weights and len(c.exit_loss_weights) != len(exits):
    raise UserError(f"config.method.exit_loss_weights needs one weight per exit ({len(exits)}), "
                    f"got {tuple(c.exit_loss_weights)!r}.")
  met_loss.check_guard(c.graph_guard)
  if not 1 <= c.num_buckets <= 16:
    raise UserError(f"config.method.num_buckets={c.num_buckets}: use 1..16 precompiled capacities per stage.")
  settings = METSettings(bottleneck=int(c.bottleneck), adapter_scale=float(c.scale),
                         adapter_dropout=float(c.dropout), activation=c.activation)
  kw = dict(encoder_cls=METEncoder, block_cls=METBlock, settings=settings, exits=exits, confidence=c.confidence,
            thresholds=tuple(float(t) for t in c.thresholds), inference=c.inference,
            num_buckets=int(c.num_buckets), exit_tokens=c.exit_tokens)
  kw["exit_gmacs"] = met_exit.exit_costs(METViT, {**backbone, **kw})
  return kw


def eval_stats(logits, out, targets):
  """The exit taken, its GMACs, and `exit_top1`: each exit's own correctness (B, K), first exit first (averaged,
  each exit's top-1 on the split).

  Only a pass that computes every exit has `exit_top1`: a training run's evaluation (no thresholds yet: the
  'last' mode), or `inference='dense_select'`. The early-exit pass computes only the exits it runs, so there it
  is absent; `python -m vit_adapt.curve` (its single-exit points) measures a calibrated model's exits.
  """
  del logits
  stats = {"exit": out["exit"].astype(jnp.float32)}
  if "gmacs" in out:
    stats["gmacs"] = out["gmacs"]
  if "exit_logits" in out:
    labels = jnp.argmax(targets, axis=-1)  # one-hot evaluation targets; argmax as in the task's top1
    stats["exit_top1"] = (jnp.argmax(out["exit_logits"], axis=-1) == labels[None]).T.astype(jnp.float32)
  return stats


MET = base.register(base.Method(
    name="met", model_cls=METViT,
    trainable=(r"/eadapter/", r"^exit_\d+/", r"^head/", r"^Transformer/encoder_norm/"),
    defaults=defaults, model_kwargs=model_kwargs, loss=met_loss.met_loss, eval_stats=eval_stats,
    budget_knob=knob.KNOB, doc=__doc__))
