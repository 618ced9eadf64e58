"""MET's training loss: the sum of the exits' cross-entropies plus a label-graph regulariser on early exits.

  L = sum_k w_k CE(logits_k, y) + graph_weight * sum_{k < K-1} G_k

G_k (ours; the paper only says "graph regularisation" of the early-exit representations) acts on the
L2-normalised exit features z_k (the LayerNorm output that head k reads) over the batch, with the label graph
A_ij = 1[y_i = y_j] for i != j:

  G_k = 1/2 sum_ij A_ij ||z_i - z_j||^2 / sum_ij A_ij      (= tr(Z^T L Z) / sum A, L = D - A)

which pulls same-class features together. It is 0 on a batch without any same-class pair (never a division by
zero). Collapse guards (`graph_guard`):
  'none'        the term above (default: the exits' cross-entropies already keep classes apart);
  'contrast'    minus graph_mu * the mean ||z_i - z_j||^2 over different-class pairs (0 if there are none);
  'relational'  instead ||S_k - sg(S_K)||_F^2 / B^2 with S = Z Z^T the batch cosine similarities: early exits
                copy the sample relations of the last exit (stop-gradient on the last exit).
Labels come as soft targets; the graph uses their argmax (one-hot, smoothed or mixed labels alike).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vit_adapt.errors import UserError
from vit_adapt.methods import base

GUARDS = ("none", "contrast", "relational")


def check_guard(guard: str) -> None:
  if guard not in GUARDS:
    raise UserError(f"config.method.graph_guard={guard!r}: use one of {GUARDS}.")


def l2_normalize(z, eps: float = 1e-6):
  z = z.astype(jnp.float32)
  return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), eps * eps))


def _masked_mean(values, mask):
  """Mean of values over mask; 0 when the mask is empty (finite, zero gradient)."""
  n = jnp.sum(mask)
  return jnp.where(n > 0, jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(n, 1.0), 0.0)


def graph_term(feat, labels, *, guard: str = "none", mu: float = 0.5, last_feat=None):
  """G_k for one early exit: feat (B, D) raw exit features, labels (B,) int, last_feat (B, D) for 'relational'."""
  z = l2_normalize(feat)
  b = z.shape[0]
  if guard == "relational":
    zl = jax.lax.stop_gradient(l2_normalize(last_feat))
    return jnp.sum(jnp.square(z @ z.T - zl @ zl.T)) / (b * b)
  # Direct pairwise differences (B^2 D is small next to the ViT): exactly 0 when same-class features coincide.
  d2 = jnp.sum(jnp.square(z[:, None, :] - z[None, :, :]), axis=-1)
  off_diag = ~jnp.eye(b, dtype=bool)
  same = (labels[:, None] == labels[None, :]) & off_diag
  g = 0.5 * _masked_mean(d2, same)
  if guard == "contrast":
    g = g - mu * _masked_mean(d2, ~same & off_diag)
  return g


def met_loss(inp: base.LossInputs):
  c = inp.config
  exit_logits = inp.out["exit_logits"]  # (K, B, C)
  k_exits = exit_logits.shape[0]
  weights = tuple(c.exit_loss_weights) or (1.0,) * k_exits
  metrics, total = {}, 0.0
  for k in range(k_exits):
    ce = inp.task_loss(exit_logits[k])
    metrics[f"ce_exit_{k}"] = ce
    total = total + weights[k] * ce
  metrics["ce"] = metrics[f"ce_exit_{k_exits - 1}"]
  if c.graph_weight and k_exits > 1:
    labels = jnp.argmax(inp.labels, axis=-1)
    feats = inp.out["exit_features"]
    graph = sum(graph_term(feats[k], labels, guard=c.graph_guard, mu=c.graph_mu, last_feat=feats[-1])
                for k in range(k_exits - 1))
    metrics["graph"] = graph
    total = total + c.graph_weight * graph
  return total, metrics
