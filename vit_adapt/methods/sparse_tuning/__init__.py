"""Sparse-Tuning (Liu et al., 2024, arXiv 2405.14700): token sparsification + Dense Adapters on a frozen ViT.

Block order (as the official code runs it; blocks are zero-based):

  x <- x + Attn(LN0(x))                       the attention also returns its probabilities
  in a sparsifying block (default 3, 6, 9):   score_j = class-token attention to token j, mean over heads;
                                              keep the top ceil(rate * (N - 1)) tokens (descending score) and,
                                              with `fuse_token`, append ONE fused token sum_j score_j x_j over
                                              the dropped j (raw scores, not renormalised)
  a <- DenseAdapter(x, earlier adapter outputs)
  x <- x + (MLP(LN1(x)) + a)

Token counts at 224 px with fusion 197 -> 140 -> 100 -> 72 (without: 197 -> 139 -> 98 -> 69). The scores come
from the block's own attention (no second pass) and are NOT detached: the loss differentiates through the fusion
weights into q/k and earlier adapters; the kept indices carry no gradient. Shapes are static: the kept count is
a Python int from the (static) token count, selection is `lax.top_k` + gather.

Dense connections (`config.method.dense_adapter`, a registry below):
  'paper'     a_N reads its input and S(a_{N-1}), S(a_{N-3}) through its own down-projections, where S applies
              the token selection/fusion that happened since a_{N-k} was computed (so counts line up).
  'released'  the official code: a five-linear adapter per block, whose outputs are ALSO added at group
              boundaries: after block 2 x += e + a0 + a1 + a2 (e = the encoder input), after block 5
              x += a3 + a4 + a5, after 8 x += a6 + a7 + a8, after 11 x += a9 + a10 (a11 is not included),
              summed left to right as the official code does. Initialisation: trunc-normal 0.02 everywhere.

Token score (`config.method.token_score`): 'cls_attention' (the paper: class-token attention) or 'mean_attention'
(the attention a token receives, mean over heads and queries) for a model without a class token (the VideoMAE
tubelet ViT of `config.video.model='tubelet'`, whose mean-pooled tokens are all candidates).

Head (`config.method.head`): 'bn_linear' (official: non-affine BatchNorm with PyTorch semantics, then a linear
layer; its statistics live in the `batch_stats` collection, which the trainer makes mutable in training) or
'linear'. The official head is initialised trunc-normal 0.01: set `config.model.head_init_std=0.01` (the configs
do). Trainable: the adapters and the head. `out` gains, per sparsifying block i: `kept_idx_{i}` (B, k) indices of
the kept tokens among that block's non-class tokens (descending score), `token_scores_{i}` (B, N-1) and
`patch_ids_{i}` (B, tokens after selection - 1): the original patch index of every non-class token after
selection, -1 for a fused token.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vit_adapt.errors import UserError
from vit_adapt.methods import base
from vit_adapt.methods.sparse_tuning import knob
from vit_adapt.methods.sparse_tuning import official  # noqa: F401  (registers the official-sparse-tuning source)
from vit_adapt.methods.sparse_tuning.adapters import ADAPTERS, TorchBatchNorm
from vit_adapt.models import vit
from vit_adapt.models import tokens


# ----------------------------------------------------------------------------------------------------------
# Token selection shared by the stream and the earlier adapter outputs.

class Selection(NamedTuple):
  """What one sparsifying block decided, to be applied identically to every tensor of its token layout."""
  idx: jax.Array  # (B, k) kept non-class tokens, in descending score order (what top_k returns)
  scores: jax.Array  # (B, N - prefix) token scores (class-token attention, mean over heads, by default)
  keep_mask: jax.Array | None  # (B, N - prefix) True at kept tokens; None = no fusion
  prefix: int = 1  # leading tokens never selected (the class token; 0 for a model without one)


def select_tokens(scores, k: int, fuse: bool, prefix: int = 1) -> Selection:
  idx = tokens.topk_indices(scores, k)
  mask = tokens.indices_to_mask(idx, scores.shape[1]) if fuse else None
  return Selection(idx, scores, mask, prefix)


def apply_selection(sel: Selection, x):
  """(B, N, D) -> (B, p + k [+ 1], D): the p prefix (class) tokens, kept tokens, then the fused token."""
  rest = x[:, sel.prefix:]
  parts = [x[:, :sel.prefix], tokens.gather_tokens(rest, sel.idx)]
  if sel.keep_mask is not None:
    parts.append(tokens.fuse_rest(rest, sel.scores, sel.keep_mask, normalize=False))
  return jnp.concatenate(parts, axis=1)


def keep_count(keep_rate: float, candidates: int) -> int | None:
  """Kept tokens out of `candidates` (the official `math.ceil(rate * (N - 1))`); None = nothing is dropped."""
  if keep_rate >= 1.0:
    return None
  k = math.ceil(keep_rate * candidates)
  return None if k >= candidates else k  # the official code skips selection (and fusion) when all are kept


def _cls_attention(probs, prefix: int):
  """The paper's score: the class token's attention to each token, mean over heads."""
  return jnp.mean(probs[:, :, 0, prefix:], axis=1)


def _mean_attention(probs, prefix: int):
  """Without a class token: the attention each token receives, mean over heads and over all queries."""
  return jnp.mean(probs[:, :, :, prefix:], axis=(1, 2))


# config.method.token_score -> (probs (B, H, N, N), prefix) -> scores (B, N - prefix). The paper scores tokens by
# the class token's attention; VideoMAE has no class token and the public material does not say which score the
# paper used there, so it is a choice: 'mean_attention', or 'cls_attention' over an added token
# (config.video.class_token=True: a zero-initialised token at position zero).
TOKEN_SCORES = {"cls_attention": _cls_attention, "mean_attention": _mean_attention}


# ----------------------------------------------------------------------------------------------------------
# Dense connections: which earlier adapter outputs each adapter reads, and what is added between blocks.

class PaperConnections:
  """The paper's equations: adapter N reads S(a_{N-1}) and S(a_{N-3}); nothing is added between blocks."""
  offsets = (1, 3)

  @classmethod
  def prev_offsets(cls, i: int) -> tuple[int, ...]:
    return tuple(o for o in cls.offsets if i - o >= 0)

  @classmethod
  def needed_after(cls, j: int, i: int, depth: int) -> bool:
    return any(i < j + o < depth for o in cls.offsets)

  @staticmethod
  def after_block(i: int, x, e, outputs):
    return x

  @staticmethod
  def validate(depth: int, sparse_blocks) -> None:
    return None


# (members, added after block, includes the encoder input e): the official code's hard-coded groups.
RELEASED_GROUPS = (((0, 1, 2), 2, True), ((3, 4, 5), 5, False), ((6, 7, 8), 8, False), ((9, 10), 11, False))


class ReleasedConnections:
  """The official code's group sums at block boundaries (see the module docstring); adapters read only x."""

  @staticmethod
  def prev_offsets(i: int) -> tuple[int, ...]:
    return ()

  @staticmethod
  def needed_after(j: int, i: int, depth: int) -> bool:
    return any(j in members and i < end < depth for members, end, _ in RELEASED_GROUPS)

  @staticmethod
  def after_block(i: int, x, e, outputs):
    for members, end, with_e in RELEASED_GROUPS:
      if i == end:
        terms = ([e] if with_e else []) + [outputs[m] for m in members]
        g = terms[0]
        for t in terms[1:]:  # left to right, as the official `a + b + c` / `sum([...])`
          g = g + t
        x = x + g
    return x

  @staticmethod
  def validate(depth: int, sparse_blocks) -> None:
    for members, end, with_e in RELEASED_GROUPS:
      if end >= depth:
        continue
      first = -1 if with_e else min(members)  # e has the token count from before block 0
      bad = [b for b in sparse_blocks if first < b <= end]
      if bad:
        raise UserError(
            f"config.method.dense_adapter='released' adds the adapter outputs of blocks {members} after block "
            f"{end} (the official code's dense connections), but config.method.sparse_blocks={tuple(sparse_blocks)}"
            f" drops tokens at block {bad[0]} inside that group, so the token counts would not match. Sparsify "
            "only at group starts (the release uses 3, 6, 9) or use dense_adapter='paper'.")


CONNECTIONS = {"paper": PaperConnections, "released": ReleasedConnections}


# ----------------------------------------------------------------------------------------------------------
# Modules.

class SparseTuningBlock(vit.Encoder1DBlock):
  """A frozen block with token selection after attention and a Dense Adapter parallel to the MLP."""
  keep_rate: float = 1.0  # 1.0: this block keeps every token
  fuse_token: bool = True
  dense_adapter: str = "paper"
  bottleneck: int = 64
  prev_offsets: tuple[int, ...] = ()
  prefix: int = 1  # 1: token 0 is the class token (never dropped); 0: no class token (a tubelet video model)
  token_score: str = "cls_attention"  # a key of TOKEN_SCORES
  # The encoder drives the two halves (models/remat.py rematerialises these entry points, not `__call__`).
  remat_methods: ClassVar[tuple[str, ...]] = ("attend_and_select", "adapt_and_mlp")

  def setup(self):
    super().setup()
    if self.dense_adapter == "paper":
      self.adapter = ADAPTERS["paper"](self.width, self.bottleneck, self.prev_offsets, dtype=self.dtype)
    else:
      self.adapter = ADAPTERS[self.dense_adapter](self.width, dtype=self.dtype)

  def attend_and_select(self, x, deterministic: bool = True):
    """x + Attn(LN0(x)), then the token selection. -> (x, Selection or None)."""
    k = keep_count(self.keep_rate, x.shape[1] - self.prefix)
    if k is None:  # a block that keeps every token needs no probabilities: the fused attention op
      return self.residual(x, self.attention_branch(x, deterministic), deterministic), None
    y, probs = self.attention_branch(x, deterministic, return_probs=True)
    x = self.residual(x, y, deterministic)
    scores = TOKEN_SCORES[self.token_score](probs.astype(jnp.float32), self.prefix)
    sel = select_tokens(scores, k, self.fuse_token, self.prefix)
    return apply_selection(sel, x), sel

  def adapt_and_mlp(self, x, prev=(), deterministic: bool = True):
    """x + (MLP(LN1(x)) + a) with a = Adapter(x, prev). -> (x, a)."""
    a = self.adapter(x, tuple(prev))
    mlp = vit.drop_path(self.mlp_branch(x, deterministic), self.drop_path, deterministic, self)
    return x + (mlp + a), a

  def __call__(self, x, deterministic: bool = True):
    # A block on its own (no earlier adapter outputs); the encoder drives the two halves itself.
    x, _ = self.attend_and_select(x, deterministic)
    return self.adapt_and_mlp(x, (), deterministic)[0]


@dataclasses.dataclass(frozen=True)
class SparseTuningSettings(vit.EncoderSettings):
  """Sparse-Tuning's settings; they differ per block: only `sparse_blocks` drop tokens, and each adapter reads
  the earlier adapter outputs its dense connections name."""
  sparse_blocks: tuple[int, ...]  # zero-based
  keep_rate: float
  fuse_token: bool
  dense_adapter: str  # a key of CONNECTIONS
  bottleneck: int
  prefix: int = 1
  token_score: str = "cls_attention"

  def block_fields(self, i: int) -> dict:
    return dict(keep_rate=self.keep_rate if i in self.sparse_blocks else 1.0, fuse_token=self.fuse_token,
                dense_adapter=self.dense_adapter, bottleneck=self.bottleneck, prefix=self.prefix,
                token_score=self.token_score,
                prev_offsets=CONNECTIONS[self.dense_adapter].prev_offsets(i))


class SparseTuningEncoder(vit.Encoder):
  """Drives each block's two halves, carrying the adapter outputs between them; `settings` is a
  `SparseTuningSettings`."""

  def __call__(self, x, train: bool = False):
    det = not train
    conn = CONNECTIONS[self.settings.dense_adapter]
    out = {}
    x = e = self.add_posemb(x)
    b, n = x.shape[:2]
    p = self.settings.prefix
    patch_ids = jnp.broadcast_to(jnp.arange(n - p, dtype=jnp.int32), (b, n - p))
    outputs: dict[int, Any] = {}  # block index -> adapter output, in the stream's current token layout
    for i, blk in enumerate(self.blocks):
      x, sel = blk.attend_and_select(x, det)
      if sel is not None:
        # The prefix is static; under `model.remat` every output of the block comes back traced, this one too.
        sel = sel._replace(prefix=p)
        outputs = {j: apply_selection(sel, a) for j, a in outputs.items()}
        parts = [tokens.gather_tokens(patch_ids[..., None], sel.idx)[..., 0]]
        if sel.keep_mask is not None:
          parts.append(jnp.full((b, 1), -1, jnp.int32))
        patch_ids = jnp.concatenate(parts, axis=1)
        out.update({f"kept_idx_{i}": sel.idx, f"token_scores_{i}": sel.scores, f"patch_ids_{i}": patch_ids})
      x, outputs[i] = blk.adapt_and_mlp(x, [outputs[i - o] for o in blk.prev_offsets], det)
      x = conn.after_block(i, x, e, outputs)
      outputs = {j: a for j, a in outputs.items() if conn.needed_after(j, i, self.depth)}
      out[f"block_{i}"] = x
    return self.encoder_norm(x), out


HEADS = ("bn_linear", "linear")


class SparseTuningViT(vit.VisionTransformer):
  """The ViT with Sparse-Tuning's encoder and head ('bn_linear': non-affine BatchNorm + linear)."""
  head_type: str = "bn_linear"

  def make_head(self):
    if self.head_type == "bn_linear":
      self.head_bn = TorchBatchNorm(momentum=0.1, epsilon=1e-6)
    init = vit.timm_trunc_normal(self.head_init_std) if self.head_init_std > 0 else nn.initializers.zeros
    self.head = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype)

  def classify(self, pre_logits, out, train: bool):
    if self.head_type == "bn_linear":
      pre_logits = self.head_bn(pre_logits, train)
    return self.head(pre_logits)


# ----------------------------------------------------------------------------------------------------------
# Registration.

def defaults():
  return ml_collections.ConfigDict({
      "name": "sparse_tuning",
      "sparse_blocks": (3, 6, 9),  # zero-based (the paper's layers 4, 7, 10)
      "keep_rate": 0.7,
      "fuse_token": True,  # the paper's token fusion (the official script's flag defaults to off)
      "dense_adapter": "paper",  # 'paper' | 'released'
      "bottleneck": 64,  # paper mode only; the released adapter's widths are fixed (64 / 32)
      "head": "bn_linear",  # 'bn_linear' (official) | 'linear'
      "token_score": "cls_attention",  # 'cls_attention' (official) | 'mean_attention' (models without a class token)
  })


def model_kwargs(c, backbone) -> dict[str, Any]:
  depth = backbone["depth"]
  if c.dense_adapter not in CONNECTIONS:
    raise UserError(f"config.method.dense_adapter={c.dense_adapter!r}: use one of {sorted(CONNECTIONS)}.")
  if c.head not in HEADS:
    raise UserError(f"config.method.head={c.head!r}: use one of {list(HEADS)}.")
  if not 0.0 < c.keep_rate <= 1.0:
    raise UserError(f"config.method.keep_rate={c.keep_rate}: must be in (0, 1] (the paper uses 0.7).")
  blocks = tuple(int(b) for b in c.sparse_blocks)
  if any(not 0 <= b < depth for b in blocks) or len(set(blocks)) != len(blocks):
    raise UserError(f"config.method.sparse_blocks={blocks}: need distinct zero-based block indices below the "
                    f"model depth {depth} (the paper: (3, 6, 9) for 12 blocks).")
  if c.dense_adapter == "released" and c.bottleneck != 64:
    raise UserError(f"config.method.bottleneck={c.bottleneck}: the released adapter's widths are fixed at 64/32; "
                    "leave bottleneck=64 or use dense_adapter='paper'.")
  CONNECTIONS[c.dense_adapter].validate(depth, blocks)
  if c.token_score not in TOKEN_SCORES:
    raise UserError(f"config.method.token_score={c.token_score!r}: use one of {', '.join(TOKEN_SCORES)}.")
  prefix = 1 if backbone.get("class_token", True) else 0
  if c.token_score == "cls_attention" and not prefix:
    raise UserError("config.method.token_score='cls_attention' needs a class token, and the video model has none "
                    "(VideoMAE's): set --config.method.token_score=mean_attention, or add a token with "
                    "--config.video.class_token=True.")
  settings = SparseTuningSettings(sparse_blocks=blocks, keep_rate=float(c.keep_rate), fuse_token=bool(c.fuse_token),
                                  dense_adapter=c.dense_adapter, bottleneck=int(c.bottleneck), prefix=prefix,
                                  token_score=c.token_score)
  return dict(encoder_cls=SparseTuningEncoder, block_cls=SparseTuningBlock, settings=settings, head_type=c.head)


SPARSE_TUNING = base.register(base.Method(
    name="sparse_tuning", model_cls=SparseTuningViT, trainable=(r"/adapter/", r"^head/"), defaults=defaults,
    model_kwargs=model_kwargs, budget_knob=knob.KNOB, doc=__doc__))
