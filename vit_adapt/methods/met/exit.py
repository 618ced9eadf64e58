"""MET inference: exit confidences, the first-confident-exit rule, the early-exit pass and per-exit costs.

The early-exit pass really skips work with static shapes. Stage 0 (stem + blocks up to the first exit) runs on the
whole batch. After every exit, the examples that keep running are moved to the front of the batch buffer (a
stable sort by "still running"), and the next stage runs on the first `c` rows only, `c` being the smallest of a
few capacities (0, B/n, 2B/n, ..., B; n = `num_buckets`) that holds them: a `lax.switch` over one precompiled
branch per capacity, so only the chosen branch executes. Rows between the count and `c` are computed and dropped.
The result equals running the whole network and taking the first exit whose confidence reaches its threshold
(`select_exit`), which tests/test_met.py::test_early_exit_equals_full_network_oracle checks.

Costs: `exit_costs` lowers the stem and each stage (blocks + exit head) alone at batch 1 and counts the
multiply-adds of the program (`efficiency_lib.lowered_gmacs`, the same on every backend); the cumulative sums are the cost of stopping
at each exit. A whole early-exit program cannot be costed this way: it contains every branch.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from vit_adapt.efficiency import measure as efficiency_lib
from vit_adapt.models import tokens


def max_softmax(logits):
  return jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


def neg_entropy(logits):
  """-H(softmax(logits)) in nats: higher = more confident, so every rule reads `confidence >= threshold`."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(logp) * logp, axis=-1)


CONFIDENCES = {"max_softmax": max_softmax, "entropy": neg_entropy}


def confidence(logits, kind: str):
  return CONFIDENCES[kind](logits)


def select_exit(exit_logits, thresholds, kind: str):
  """The reference rule on all exits' logits (K, B, C): first k with conf_k >= thresholds[k]; last exit otherwise.

  Returns (logits (B, C) of the exit taken, exit index (B,) int32).
  """
  conf = confidence(exit_logits[:-1], kind)  # (K-1, B)
  ok = conf >= jnp.asarray(thresholds, jnp.float32)[:, None]
  ok = jnp.concatenate([ok, jnp.ones((1,) + ok.shape[1:], bool)])
  idx = jnp.argmax(ok, axis=0).astype(jnp.int32)  # first True
  return jnp.take_along_axis(exit_logits, idx[None, :, None], axis=0)[0], idx


def batch_capacities(batch: int, num_buckets: int) -> tuple[int, ...]:
  """0 and `num_buckets` evenly spaced capacities up to `batch` (distinct, ascending, the last = batch)."""
  return tuple(sorted({0} | {min(batch, int(math.ceil(i * batch / num_buckets)))
                             for i in range(1, num_buckets + 1)}))


def early_exit_forward(model, images, thresholds):
  """The early-exit pass of a bound METViT: -> (logits (B, C) of the exit taken, exit index (B,) int32)."""
  b = images.shape[0]
  k_exits = model.num_exits
  thresholds = jnp.asarray(thresholds, jnp.float32)
  caps = batch_capacities(b, model.num_buckets)
  rows = jnp.arange(b, dtype=jnp.int32)

  def run_stage(k, x, capacity):
    """Stage k on the first `capacity` rows of x; -> (x with those rows updated, logits (B, C), rows 0-padded)."""
    if capacity == 0:
      return model.after_exit(x, k), jnp.zeros((b, model.num_classes), jnp.float32)
    y, lg = model.stage_and_exit(x[:capacity], k)
    if capacity == b:
      return y, lg
    return (jax.lax.dynamic_update_slice(model.after_exit(x, k), y, (0, 0, 0)),
            jnp.pad(lg, ((0, b - capacity), (0, 0))))

  x = model.stem(images)
  perm = rows  # original example of each buffer row
  running = jnp.int32(b)  # rows [0, running) of the buffer are still running
  final = jnp.zeros((b, model.num_classes), jnp.float32)
  exit_idx = jnp.full((b,), k_exits - 1, jnp.int32)
  for k in range(k_exits):
    if k == 0:
      x, lg = run_stage(0, x, b)
    else:
      branches = [functools.partial(run_stage, k, capacity=c) for c in caps]
      x, lg = jax.lax.switch(tokens.choose_bucket(running, caps), branches, x)
    live = rows < running
    done = live if k == k_exits - 1 else live & (confidence(lg, model.confidence) >= thresholds[k])
    # Scatter the rows that exit here back to their original positions (other rows write out of range).
    target = jnp.where(done, perm, b)
    final = final.at[target].set(lg, mode="drop")
    exit_idx = exit_idx.at[target].set(k, mode="drop")
    if k < k_exits - 1:
      keep = live & ~done
      order = jnp.argsort(~keep, stable=True)  # running rows first, in their current order
      x, perm = x[order], perm[order]
      running = jnp.sum(keep.astype(jnp.int32))
  return final, exit_idx


_NOT_COST = ("exit_gmacs", "thresholds", "inference", "confidence", "num_buckets")


@functools.lru_cache(maxsize=32)
def _exit_costs(model_cls, items: tuple) -> tuple[float, ...]:
  model = model_cls(**dict(items))
  size = model.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  cost = efficiency_lib.lowered_gmacs(lambda v, im: model.apply(v, im, method=model_cls.stem), variables, images)
  costs, per_shape = [], {}
  for k in range(model.num_exits):
    # Every block has the same shapes, so stages with as many blocks, tokens and the same kind of head cost the
    # same: compile one stage of each kind (compiling is the slow part of building a model).
    n_tokens = 1 + model.num_patches + model.extra_tokens(k)
    tokens_in = jax.ShapeDtypeStruct((1, n_tokens, model.width), model.dtype)
    kind = (model.exits[k] - (model.exits[k - 1] if k else 0), k == model.num_exits - 1, n_tokens)
    if kind not in per_shape:
      fn = lambda v, t, k=k: model.apply(v, t, k, method=model_cls.stage_and_exit)
      per_shape[kind] = efficiency_lib.lowered_gmacs(fn, variables, tokens_in)
    cost += per_shape[kind]
    costs.append(float(cost))
  return tuple(costs)


def exit_costs(model_cls, kwargs: dict) -> tuple[float, ...]:
  """Cumulative GMACs per example of stopping at each exit, from the compiled stem and stages (cached)."""
  # Inference settings do not change what a stage computes: leave them out of the cache key.
  kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_COST}
  return _exit_costs(model_cls, tuple(sorted(kwargs.items())))
