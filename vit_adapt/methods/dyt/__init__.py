"""DyT — Dynamic Tuning (Zhao et al., NeurIPS 2024): a token dispatcher per block decides which patch tokens go
through the frozen MLP; a bottleneck adapter updates every token. Fewer MLP tokens = real inference savings.

Block (MLP dispatch, the official code's only variant), with x the residual stream:
  x <- x + Attn(LN0(x));  s = router(x[:, 1:]) (linear D -> 1, un-normalised, class token always active)
  m = hard Gumbel-sigmoid(s) with straight-through gradient (training, tau fixed, default 5) | 1[s > 0] (evaluation)
  x <- x + m * MLP(LN1(x)) + adapter(x)
A skipped token still gets the attention update, stays a key/value and gets the adapter update.

The paper's other dispatch positions (not in the official release; see the spec): `attention` (the router reads
the block input; a skipped token gets no attention update), `attention_mlp` (one mask for both), `layer` (a skipped
token passes the block unchanged except for the adapter and is not a key/value). Adapters always read the
post-attention stream and are added at the end of the block.
`attention_keys` says whether a skipped token stays a key/value of the attention variants:
  selected (default)  the paper's Fig. 2 reading: the attention runs on the selected tokens only, a skipped token is
                      neither a query nor a key/value (LN1 and q, k, v computed for the selected tokens only);
  all                 the spec's earlier proposal: a skipped token is no query but stays a key/value of the others.
`layer` dispatch always uses the selected tokens only (the field is ignored there, and by `mlp` dispatch).

MoE adapter (`num_experts` > 1, the paper's enhanced adapter whose code was never released; proposal): N full
adapters, a per-image softmax router on a mean token, and the experts' weights combined before use (compute of one
adapter). N = 1 is exactly the plain adapter. `moe_gate_input` names the mean token: `block_input` (default, the
spec's proposal: the mean of the block's input tokens) | `adapter_input` (the mean of the adapter's own input, the
post-attention stream).

Loss (`loss`): CE + rate_weight * (mean(masks) - target_rate)^2 (ONE global mean over batch x layers x patch tokens)
+ the complete-model pass (same weights, every token through the MLP): its CE + KL(p_complete (detached) || p_dyn).

Inference (`inference`, used whenever train=False):
  threshold  exact `s > 0` semantics; the MLP (or attention/layer) runs only on the active rows of the whole batch,
             compacted into static capacities chosen on device (two `lax.switch` levels of <= 8 capacities, at most
             ~1/64 padding), scattered back: equal to `masked`, with the compute of the active tokens.
  capacity   per-image top-k by router logit, k = round(capacity_rate * patch tokens): predictable latency.
  masked     computes every token and multiplies by the mask (reference/debugging).

`out` carries `dyt_masks` and `dyt_logits` (B, depth, N-1), `dyt_rows` (depth,) rows the dispatched MLP actually
computed for the whole batch, `activation_rate` (B,) and `gmacs` (B,) per image (see dyt_flops).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vit_adapt.errors import UserError
from vit_adapt.methods import base
from vit_adapt.methods.dyt import flops as dyt_flops
from vit_adapt.methods.dyt import knob
from vit_adapt.methods.dyt import official  # noqa: F401  (registers the official-dyt checkpoint source)
from vit_adapt.models import vit
from vit_adapt.models.adapters import Adapter
from vit_adapt.models import tokens

DISPATCHES = ("mlp", "attention", "attention_mlp", "layer")
ATTENTION_KEYS = ("selected", "all")
MOE_GATE_INPUTS = ("block_input", "adapter_input")
INFERENCE = ("threshold", "capacity", "masked")


def gumbel_sigmoid_st(logits, rng, tau: float):
  """Hard Gumbel-sigmoid with a straight-through gradient: forward 1[s + L > 0], backward d sigmoid((s+L)/tau).

  L ~ Logistic(0, 1) (the difference of two Gumbel samples), so P(m = 1) = sigmoid(s); tau only scales the gradient.
  """
  u = jax.random.uniform(rng, logits.shape, jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
  soft = jax.nn.sigmoid((logits + jnp.log(u) - jnp.log1p(-u)) / tau)
  hard = (soft > 0.5).astype(soft.dtype)
  return hard + soft - jax.lax.stop_gradient(soft)


class MoEAdapter(nn.Module):
  """N bottleneck adapters mixed per image: weights combined with softmax(gate(mean token)) before use."""
  num_experts: int
  bottleneck: int
  out_dim: int
  scale: float = 1.0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    e, d, r = self.num_experts, self.out_dim, self.bottleneck
    bound = 1.0 / d ** 0.5  # PyTorch Linear default for the down-projection, per expert
    self.down_kernel = self.param("down_kernel", lambda k, s: jax.random.uniform(k, s, minval=-bound, maxval=bound),
                                  (e, d, r))
    self.down_bias = self.param("down_bias", nn.initializers.zeros, (e, r))
    self.up_kernel = self.param("up_kernel", nn.initializers.zeros, (e, r, d))
    self.up_bias = self.param("up_bias", nn.initializers.zeros, (e, d))
    self.gate = nn.Dense(e, kernel_init=nn.initializers.normal(0.02), dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, x, gate_input, deterministic: bool = True):
    alpha = jax.nn.softmax(self.gate(gate_input).astype(jnp.float32), axis=-1).astype(self.dtype)  # (B, E)
    mix = lambda w: jnp.einsum("be,e...->b...", alpha, w.astype(self.dtype))
    h = jnp.einsum("bnd,bdr->bnr", x.astype(self.dtype), mix(self.down_kernel)) + mix(self.down_bias)[:, None]
    h = self.drop(nn.relu(h), deterministic=deterministic)
    return (jnp.einsum("bnr,brd->bnd", h, mix(self.up_kernel)) + mix(self.up_bias)[:, None]) * self.scale


class DyTBlock(vit.Encoder1DBlock):
  """Encoder block with a token dispatcher (`router`) and an adapter (`adapter`); returns (x, aux)."""
  bottleneck: int = 16
  adapter_scale: float = 1.0
  adapter_dropout: float = 0.1
  num_experts: int = 1
  dispatch: str = "mlp"
  tau: float = 5.0
  inference: str = "threshold"
  capacity_rate: float = 0.5
  num_buckets: int = 8
  attention_keys: str = "selected"
  moe_gate_input: str = "block_input"

  @property
  def keys_selected(self) -> bool:
    """Whether the dispatched attention uses only the selected tokens as keys/values (see the module doc)."""
    return self.dispatch == "layer" or (self.dispatch != "mlp" and self.attention_keys == "selected")

  def setup(self):
    super().setup()
    # timm's trunc_normal_(std=.02) truncates at +-2 ABSOLUTE (100 sigma): effectively a plain normal.
    self.router = nn.Dense(1, kernel_init=nn.initializers.normal(0.02), dtype=self.dtype)
    if self.num_experts == 1:
      self.adapter = Adapter(self.bottleneck, self.width, scale=self.adapter_scale, dropout=self.adapter_dropout,
                             dtype=self.dtype)
    else:
      self.adapter = MoEAdapter(self.num_experts, self.bottleneck, self.width, scale=self.adapter_scale,
                                dropout=self.adapter_dropout, dtype=self.dtype)

  # -- pieces ------------------------------------------------------------------------------------------------

  def route(self, stream, train: bool):
    """Router logits (B, N-1) of the patch tokens and their mask (float, straight-through in training)."""
    logits = self.router(stream[:, 1:])[..., 0].astype(jnp.float32)
    if train:
      return logits, gumbel_sigmoid_st(logits, self.make_rng("gumbel"), self.tau)
    return logits, (logits > 0).astype(jnp.float32)

  def adapt(self, x1, x_in, deterministic: bool):
    if self.num_experts == 1:
      return self.adapter(x1, deterministic=deterministic)
    gate_input = x_in if self.moe_gate_input == "block_input" else x1
    return self.adapter(x1, jnp.mean(gate_input, axis=1), deterministic=deterministic)

  def attention_update(self, x, idx, valid, keys_all: bool):
    """Attention output (B, K, D) for the tokens `idx` (B, K) as queries; keys/values are all tokens
    (`keys_all`) or only the gathered ones marked `valid` (`keys_selected`). Padded queries give garbage rows that
    callers multiply by `valid`."""
    xs = tokens.gather_tokens(x, idx)
    if not keys_all:
      return self.attention_branch(xs, True, mask=valid[:, None, None, :])
    h = self.LayerNorm_0(x)
    q = self.attn.query(tokens.gather_tokens(h, idx))
    o, _ = self.attn.attend(q, self.attn.key(h), self.attn.value(h))
    return self.attn.project_out(o)

  def _pure(self, method):
    """`method` of this block as a pure function of its inputs, safe inside `lax.switch` (Linen modules may not
    be called from raw JAX control flow; an unbound clone applied to the same parameters may)."""
    return functools.partial(self.clone(parent=None).apply, {"params": self.variables["params"]}, method=method)

  # -- forward ---------------------------------------------------------------------------------------------

  def __call__(self, x, deterministic: bool = True, complete: bool = False):
    train = not deterministic
    mode = self.inference
    if train or complete or self.is_initializing():
      mode = "masked"
    router_on_input = self.dispatch != "mlp"
    x1 = None
    if not router_on_input:
      x1 = self.residual(x, self.attention_branch(x, deterministic), deterministic)
    logits, mask = self.route(x if router_on_input else x1, train and not complete)
    if complete:
      mask = jnp.ones_like(mask)
    if mode == "capacity":
      k = max(1, min(logits.shape[1], round(self.capacity_rate * logits.shape[1])))
      idx = jnp.concatenate([jnp.zeros((x.shape[0], 1), jnp.int32), 1 + tokens.topk_indices(logits, k)], axis=1)
      mask = tokens.indices_to_mask(idx[:, 1:] - 1, logits.shape[1]).astype(jnp.float32)
    full = jnp.concatenate([jnp.ones((x.shape[0], 1), mask.dtype), mask], axis=1)  # (B, N), class token = 1
    path = {"masked": self._masked, "threshold": self._threshold, "capacity": self._capacity}[mode]
    args = (idx,) if mode == "capacity" else ()
    out, rows = path(x, x1, full, deterministic, *args)
    aux = {"mask": mask, "logits": logits, "tokens": jnp.sum(full > 0.5, axis=1).astype(jnp.int32),
           "rows": jnp.asarray(rows, jnp.int32)}
    return out, aux

  def _masked(self, x, x1, full, deterministic):
    m = full[..., None].astype(x.dtype)
    if self.dispatch != "mlp":
      key_mask = (full > 0.5)[:, None, None, :] if self.keys_selected else None
      x1 = self.residual(x, m * self.attention_branch(x, deterministic, mask=key_mask), deterministic)
    mlp = self.mlp_branch(x1, deterministic)
    if self.dispatch != "attention":
      mlp = m * mlp
    rows = x.shape[0] * x.shape[1]
    return self.residual(x1, mlp, deterministic) + self.adapt(x1, x, deterministic), rows

  def _threshold(self, x, x1, full, deterministic):
    active = full > 0.5
    b, n, d = x.shape
    if self.dispatch != "mlp":  # per-image query subsets through bucketed capacities
      attn = self._pure(functools.partial(DyTBlock.attention_update, keys_all=not self.keys_selected))

      def branch(x, capacity):
        idx, valid = tokens.first_active_indices(active, capacity)
        y = attn(x, idx, valid) * valid[..., None].astype(x.dtype)
        return tokens.scatter_add_tokens(x, idx, y)

      caps = tokens.bucket_capacities(n, self.num_buckets)
      x1 = tokens.switch_on_count(jnp.max(jnp.sum(active, axis=1)), caps, branch, x)
    a = self.adapt(x1, x, deterministic)
    if self.dispatch == "attention":
      return x1 + self.mlp_branch(x1) + a, b * n
    mlp = self._pure(vit.Encoder1DBlock.mlp_branch)
    y, rows = tokens.apply_on_active_rows(mlp, x1.reshape(b * n, d), active.reshape(b * n),
                                          num_buckets=self.num_buckets)
    return x1 + y.reshape(b, n, d) + a, rows

  def _capacity(self, x, x1, full, deterministic, idx):
    b, n, _ = x.shape
    if self.dispatch != "mlp":
      valid = jnp.ones(idx.shape, bool)
      x1 = tokens.scatter_add_tokens(x, idx, self.attention_update(x, idx, valid, not self.keys_selected))
    a = self.adapt(x1, x, deterministic)
    if self.dispatch == "attention":
      return x1 + self.mlp_branch(x1) + a, b * n
    y = self.mlp_branch(tokens.gather_tokens(x1, idx))
    return tokens.scatter_add_tokens(x1 + a, idx, y), idx.size


@dataclasses.dataclass(frozen=True)
class DyTSettings(vit.EncoderSettings):
  """The fields of every `DyTBlock` (the model's cost formula reads `dispatch` and `bottleneck` too)."""
  bottleneck: int
  adapter_scale: float
  adapter_dropout: float
  num_experts: int
  dispatch: str
  tau: float
  inference: str
  capacity_rate: float
  num_buckets: int
  attention_keys: str
  moe_gate_input: str


class DyTEncoder(vit.Encoder):
  """Runs the DyT blocks and stacks their router outputs."""

  def __call__(self, x, train: bool = False, complete: bool = False):
    out = {}
    x = self.add_posemb(x)
    auxes = []
    for i, blk in enumerate(self.blocks):
      x, aux = blk(x, deterministic=not train, complete=complete)
      out[f"block_{i}"] = x
      auxes.append(aux)
    out["dyt_masks"] = jnp.stack([a["mask"] for a in auxes], axis=1)     # (B, depth, N-1)
    out["dyt_logits"] = jnp.stack([a["logits"] for a in auxes], axis=1)  # (B, depth, N-1)
    out["dyt_tokens"] = jnp.stack([a["tokens"] for a in auxes], axis=1)  # (B, depth) dispatched incl. class
    out["dyt_rows"] = jnp.stack([a["rows"] for a in auxes])              # (depth,) rows computed, whole batch
    return self.encoder_norm(x), out


class DyTVisionTransformer(vit.VisionTransformer):
  """ViT with DyT blocks (`settings` is a `DyTSettings`); `__call__(images, train, complete=True)` sends every
  token everywhere (the base forwards `complete` to `encode`)."""

  def encode(self, x, train: bool, complete: bool = False):
    x, out = super().encode(x, train, complete=complete)
    out["activation_rate"] = jnp.mean(out["dyt_masks"], axis=(1, 2))
    out["gmacs"] = self.gmacs(out["dyt_tokens"])
    return x, out

  def gmacs(self, dispatched):
    """Per-image GMACs (B,) from the dispatched token counts (B, depth), paper convention (dyt_flops)."""
    n = 1 + self.num_patches
    per_block = dyt_flops.block_macs(dispatched.astype(jnp.float32), dispatch=self.settings.dispatch,
                                     width=self.width, mlp_dim=self.mlp_dim, num_tokens=n,
                                     bottleneck=self.settings.bottleneck,
                                     attention_keys=self.settings.attention_keys,
                                     num_experts=self.settings.num_experts)
    base_macs = dyt_flops.base_macs(width=self.width, patch_size=self.patch_size, num_patches=self.num_patches,
                                    num_classes=self.num_classes)
    return (base_macs + jnp.sum(per_block, axis=1)) / 1e9


# ---------------------------------------------------------------------------------------------------------
# Loss, config, registration.

def loss(inp: base.LossInputs):
  """CE + rate loss (+ complete-model CE + KL(p_complete detached || p_dyn) in training, if enabled)."""
  c = inp.config
  ce = inp.task_loss(inp.logits)
  # ONE global mean: batch x layers x patch tokens (over the whole batch when gradients are accumulated).
  rate = inp.batch_mean("activation_rate", jnp.mean(inp.out["dyt_masks"]))
  rate_loss = (rate - c.target_rate) ** 2
  total = c.ce_weight * ce + c.rate_weight * rate_loss
  metrics = {"ce": ce, "rate_loss": rate_loss, "activation_rate": rate}
  if inp.train and c.complete_pass:
    full_logits, _ = inp.forward(complete=True)
    ce_full = inp.task_loss(full_logits)
    logp_full = jax.nn.log_softmax(jax.lax.stop_gradient(full_logits).astype(jnp.float32))
    logp_dyn = jax.nn.log_softmax(inp.logits.astype(jnp.float32))
    kl = jnp.mean(jnp.sum(jnp.exp(logp_full) * (logp_full - logp_dyn), axis=-1))
    total = total + c.complete_ce_weight * ce_full + c.distill_weight * kl
    metrics.update(complete_ce=ce_full, distill_kl=kl)
  return total, {"loss": total, **metrics}


def eval_stats(logits, out, targets):
  del logits, targets
  return {"activation_rate": out["activation_rate"], "gmacs": out["gmacs"]}


def defaults():
  return ml_collections.ConfigDict(dict(
      name="dyt", bottleneck=16, scale=1.0, dropout=0.1, num_experts=1, dispatch="mlp", tau=5.0,
      target_rate=0.5, ce_weight=1.0, rate_weight=2.0, complete_pass=True, complete_ce_weight=1.0,
      distill_weight=1.0, inference="threshold", capacity_rate=0.5, num_buckets=8, attention_keys="selected",
      moe_gate_input="block_input"))


def model_kwargs(c, backbone) -> dict[str, Any]:
  if c.dispatch not in DISPATCHES:
    raise UserError(f"config.method.dispatch={c.dispatch!r}: use one of {', '.join(DISPATCHES)}.")
  if c.attention_keys not in ATTENTION_KEYS:
    raise UserError(f"config.method.attention_keys={c.attention_keys!r}: use one of {', '.join(ATTENTION_KEYS)}.")
  if c.moe_gate_input not in MOE_GATE_INPUTS:
    raise UserError(f"config.method.moe_gate_input={c.moe_gate_input!r}: use one of {', '.join(MOE_GATE_INPUTS)}.")
  if c.inference not in INFERENCE:
    raise UserError(f"config.method.inference={c.inference!r}: use one of {', '.join(INFERENCE)}.")
  if not 0.0 < c.capacity_rate <= 1.0:
    raise UserError(f"config.method.capacity_rate={c.capacity_rate}: use a fraction in (0, 1].")
  if not 1 <= c.num_buckets <= tokens.MAX_BUCKETS:
    raise UserError(f"config.method.num_buckets={c.num_buckets}: use 1..{tokens.MAX_BUCKETS}.")
  if c.num_experts < 1 or c.bottleneck < 1:
    raise UserError(f"config.method.num_experts={c.num_experts}, bottleneck={c.bottleneck}: both must be >= 1.")
  settings = DyTSettings(
      bottleneck=int(c.bottleneck), adapter_scale=base.as_number(c.scale), adapter_dropout=float(c.dropout),
      num_experts=int(c.num_experts), dispatch=c.dispatch, tau=float(c.tau), inference=c.inference,
      capacity_rate=float(c.capacity_rate), num_buckets=int(c.num_buckets),
      attention_keys=c.attention_keys, moe_gate_input=c.moe_gate_input)
  return dict(encoder_cls=DyTEncoder, block_cls=DyTBlock, settings=settings)


DYT = base.register(base.Method(
    name="dyt", model_cls=DyTVisionTransformer, trainable=(r"/adapter/", r"/router/", r"^head/"),
    defaults=defaults, model_kwargs=model_kwargs, loss=loss, rng_streams=("gumbel",), eval_stats=eval_stats,
    budget_knob=knob.KNOB,
    traced_fields=("scale", "target_rate", "ce_weight", "rate_weight", "complete_ce_weight", "distill_weight"),
    # Before these fields existed skipped tokens stayed keys/values and the MoE gate read the block input.
    legacy={"attention_keys": "all", "moe_gate_input": "block_input"}, doc=__doc__))
