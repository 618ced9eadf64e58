"""Parameter trees: '/'-joined flat views, and the trainable / frozen split by regexes.

Gradients are taken with respect to the trainable tree only, so no gradient is ever computed for a frozen
weight (masking a full-tree gradient would still compute all of them); checkpoints store only the trainable tree.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import flax


def flatten(tree) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def unflatten(flat: dict[str, Any]) -> dict:
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def trainable_predicate(patterns: Sequence[str]) -> Callable[[str], bool]:
  compiled = [re.compile(p) for p in patterns]
  return lambda path: any(c.search(path) for c in compiled)


def split_params(params, patterns: Sequence[str]):
  """-> (trainable, frozen), two nested dicts that partition `params` by the regexes (re.search on paths)."""
  is_trainable = trainable_predicate(patterns)
  flat = flatten(params)
  train = {k: v for k, v in flat.items() if is_trainable(k)}
  frozen = {k: v for k, v in flat.items() if not is_trainable(k)}
  return unflatten(train), unflatten(frozen)


def merge_params(trainable, frozen):
  flat = flatten(frozen)
  flat.update(flatten(trainable))
  return unflatten(flat)
