"""The optimizer: AdamW with per-step linear warmup + cosine decay, per-parameter policies, gradient clipping.

This is the recipe of every paper reimplemented here (DyT, Sparse-Tuning, SynQT, MET, VPT, AdaptFormer):
AdamW (PyTorch semantics: p <- p - lr * (adam(g) + wd * p), biases and head decayed too), the learning rate
rising linearly from 0 over `warmup` steps (updated every step, not every epoch) and then following a half
cosine down to `optim.min_lr` at the last step.

Per-parameter policies (`config.optim.policies`): a sequence of `(regex, rule)` pairs matched with `re.search`
against '/'-joined parameter paths (e.g. 'Transformer/encoderblock_3/adapter/down/kernel'); the first matching
pair decides. `rule` is 'frozen' (the parameter leaves the trainable tree: no gradient, no optimizer state) or
space/comma separated multipliers 'lr=<x>' and/or 'wd=<y>' of the learning rate and the weight decay, e.g.
`(('^head/', 'lr=10'), ('/bias$|/scale$', 'wd=0'), ('posembed', 'frozen'))`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import jax
import ml_collections
import optax

from vit_adapt.errors import UserError
from vit_adapt.models import params as params_lib


@dataclasses.dataclass(frozen=True)
class Policy:
  frozen: bool = False
  lr_mult: float = 1.0
  wd_mult: float = 1.0


def parse_rule(rule: str) -> Policy:
  if rule.strip() == "frozen":
    return Policy(frozen=True)
  kw = {}
  for part in filter(None, re.split(r"[\s,]+", rule)):
    key, sep, value = part.partition("=")
    names = {"lr": "lr_mult", "wd": "wd_mult"}
    try:
      kw[names[key]] = float(value) if sep else None
      if kw[names[key]] is None:
        raise ValueError
    except (KeyError, ValueError):
      raise UserError(f"config.optim.policies rule {rule!r}: use 'frozen' or 'lr=<multiplier>' and/or "
                      "'wd=<multiplier>' (e.g. 'lr=0.1 wd=0').") from None
  return Policy(**kw)


def parse_policies(policies: Sequence) -> list[tuple[re.Pattern, Policy]]:
  out = []
  for item in policies or ():
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item)):
      raise UserError(f"config.optim.policies entry {item!r}: each entry is a (regex, rule) pair of strings, "
                      "e.g. ('^head/', 'lr=10').")
    try:
      pattern = re.compile(item[0])
    except re.error as e:
      raise UserError(f"config.optim.policies regex {item[0]!r} is invalid: {e}.") from None
    out.append((pattern, parse_rule(item[1])))
  return out


def policy_of(path: str, rules) -> Policy:
  for pattern, policy in rules:
    if pattern.search(path):
      return policy
  return Policy()


def split_trainable(params, method, optim_config: ml_collections.ConfigDict):
  """-> (trainable, frozen): the method's trainable regexes minus parameters a policy freezes."""
  trainable, frozen = params_lib.split_params(params, method.trainable)
  rules = parse_policies(optim_config.policies)
  flat = params_lib.flatten(trainable)
  frozen_by_policy = {k: v for k, v in flat.items() if policy_of(k, rules).frozen}
  if frozen_by_policy:
    trainable = params_lib.unflatten({k: v for k, v in flat.items() if k not in frozen_by_policy})
    frozen = params_lib.merge_params(params_lib.unflatten(frozen_by_policy), frozen)
  if not jax.tree_util.tree_leaves(trainable):
    raise UserError(f"method {method.name!r} with config.optim.policies={tuple(optim_config.policies)!r} leaves "
                    "no trainable parameter.")
  return trainable, frozen


def schedule_lengths(config, num_train: int) -> tuple[int, int, int]:
  """-> (steps_per_epoch, total_steps, warmup_steps) from the train split size and `config.train`."""
  b = config.train.batch_size
  if num_train < b:
    raise UserError(f"the training split {config.dataset.split!r} of {config.dataset.name!r} has {num_train} "
                    f"examples, fewer than config.train.batch_size={b}.")
  # The papers' loaders keep the last partial batch (1000 images / 64 = 16 steps per epoch): with
  # `keep_last_partial` the schedule counts it. Our stream is continuous (batches cross epoch boundaries and stay
  # full), so the run makes the papers' number of optimizer steps with static shapes.
  steps_per_epoch = math.ceil(num_train / b) if config.train.keep_last_partial else num_train // b
  total = config.train.steps or int(round(config.train.epochs * steps_per_epoch))
  warmup = int(round(config.train.warmup_epochs * steps_per_epoch))
  if total <= 0:
    raise UserError("config.train.steps and config.train.epochs give no training step: set one of them > 0.")
  return steps_per_epoch, total, warmup


def _number(x):
  """A config number as a float; a per-run value traced by a packed sweep (`train/packed.py`) as it is."""
  return float(x) if isinstance(x, (int, float)) else x


def _is_zero(x) -> bool:
  """Whether a config number is 0 (a traced per-run value never is: packs only trace values that vary)."""
  return isinstance(x, (int, float)) and x == 0


def schedule(optim_config, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr` over `warmup_steps`, then half cosine to `min_lr` at `total_steps` (optax's
  warmup-cosine schedule, built from its parts so that `lr` and `min_lr` may be traced per run in a packed
  sweep; a run of no more steps than its warmup keeps one cosine step, as before)."""
  warmup_steps = min(warmup_steps, total_steps)
  decay_steps = max(total_steps, warmup_steps + 1)
  lr, end = _number(optim_config.lr), _number(optim_config.min_lr)
  alpha = end / lr  # lr > 0 (config_lib.validate); the same expression as optax's warmup_cosine_decay_schedule
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps),
                               optax.cosine_decay_schedule(lr, decay_steps - warmup_steps, alpha)],
                              [warmup_steps])


def _scale_per_leaf(factors) -> optax.GradientTransformation:
  """Multiplies each update by a static per-parameter factor (lr multipliers)."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u if f == 1.0 else u * f, updates, factors), state
  return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def _decoupled_decay(wd: float, factors) -> optax.GradientTransformation:
  """AdamW's decay term wd * mult * p, added to the Adam direction before the learning rate scales it."""
  def update(updates, state, params):
    return jax.tree.map(lambda u, p, f: u if f == 0.0 else u + (wd * f) * p, updates, params, factors), state
  return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def make_optimizer(optim_config, trainable, total_steps: int, warmup_steps: int):
  """-> (optax transformation over the trainable tree, learning-rate schedule)."""
  rules = parse_policies(optim_config.policies)
  flat = params_lib.flatten(trainable)
  policy = {k: policy_of(k, rules) for k in flat}
  lr_mult = params_lib.unflatten({k: p.lr_mult for k, p in policy.items()})
  wd_mult = params_lib.unflatten({k: p.wd_mult for k, p in policy.items()})
  sched = schedule(optim_config, total_steps, warmup_steps)
  chain = []
  if optim_config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(float(optim_config.grad_clip)))
  chain.append(optax.scale_by_adam(b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps))
  if not _is_zero(optim_config.wd):
    chain.append(_decoupled_decay(_number(optim_config.wd), wd_mult))
  chain.append(optax.scale_by_learning_rate(sched))
  if any(p.lr_mult != 1.0 for p in policy.values()):
    chain.append(_scale_per_leaf(lr_mult))
  return optax.chain(*chain), sched
