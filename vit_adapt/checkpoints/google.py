"""Google ViT `.npz` layouts -> the backbone's Linen parameter tree.

Three layouts exist in the wild, all handled here:

  original / AugReg   pre-Linen module names: inside each `encoderblock_i` the sub-modules are numbered
                      globally (`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`);
                      `Transformer/posembed_input/pos_embedding` (1, 1+g*g, D) holds the class slot; the
                      original i21k files add a `pre_logits` representation layer (dropped: fine-tuning never
                      uses it, as in the ViT paper's transfer setup).
  big_vision native   Linen names, but the position embedding is the top-level `pos_embedding` (1, g*g, D)
                      without a class slot: big_vision adds it to the patch tokens *before* prepending the
                      class token, so the class token gets no position embedding. We store a zero class slot,
                      which computes exactly the same thing.
  scan-stacked        big_vision with `scan=True`: one `Transformer/encoderblock/...` whose arrays carry a
                      leading depth axis; unstacked into `encoderblock_{i}`.
"""

from __future__ import annotations

import logging
import re

import numpy as np
from flax import traverse_util

from vit_adapt.checkpoints.readers import Tensors

_INDEXED = re.compile(r"(.+)_(\d+)")
_DROPPED_PREFIXES = ("pre_logits/",)


def is_google_vit(tensors: Tensors) -> bool:
  return "embedding/kernel" in tensors


def renumber_pre_linen(tree: dict) -> dict:
  """Renumbers `Name_k` children of every module to 0, 1, ... per name, in index order.

  Pre-Linen Flax numbered sub-modules by creation order across all types in the parent (so a block held
  `LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3`); Linen numbers each type on its own
  (`LayerNorm_0, LayerNorm_1, MultiHeadDotProductAttention_0, MlpBlock_0`). Same result as
  `flax.training.checkpoints.convert_pre_linen`, without importing its TensorFlow-dependent module.
  Idempotent on Linen names.
  """
  if not isinstance(tree, dict):
    return tree
  groups: dict[str, list[tuple[int, str]]] = {}
  out = {}
  for key, value in tree.items():
    m = _INDEXED.fullmatch(key)
    if m and isinstance(value, dict):
      groups.setdefault(m.group(1), []).append((int(m.group(2)), key))
    else:
      out[key] = renumber_pre_linen(value)
  for base, members in groups.items():
    if base == "encoderblock":  # block indices are the layer number, not a per-type counter
      for _, key in members:
        out[key] = renumber_pre_linen(tree[key])
      continue
    for new_index, (_, key) in enumerate(sorted(members)):
      out[f"{base}_{new_index}"] = renumber_pre_linen(tree[key])
  return out


def unstack_scanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`Transformer/encoderblock/X` (depth, ...) -> `Transformer/encoderblock_{i}/X`."""
  stacked = {k: v for k, v in flat.items() if k.startswith("Transformer/encoderblock/")}
  if not stacked:
    return flat
  out = {k: v for k, v in flat.items() if k not in stacked}
  for k, v in stacked.items():
    rest = k[len("Transformer/encoderblock/"):]
    for i in range(v.shape[0]):
      out[f"Transformer/encoderblock_{i}/{rest}"] = v[i]
  return out


def add_class_slot(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """big_vision's top-level `pos_embedding` (1, g*g, D) -> ours (1, 1+g*g, D) with a zero class slot."""
  if "pos_embedding" not in flat:
    return flat
  flat = dict(flat)
  pe = flat.pop("pos_embedding")
  pe = pe.reshape(1, -1, pe.shape[-1])
  flat["Transformer/posembed_input/pos_embedding"] = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
  return flat


def google_to_params(tensors: Tensors) -> dict:
  """Any of the three layouts -> nested Linen params.

  Names that are not backbone weights stay in the tree (renamed like the rest) so the merge reports them as
  unexpected; only the known-unused `pre_logits` is dropped.
  """
  flat = {k: np.asarray(v) for k, v in tensors.items()}
  dropped = [k for k in flat if k.startswith(_DROPPED_PREFIXES)]
  if dropped:
    logging.info("Dropping the pre-training representation layer %s (unused when fine-tuning).", dropped)
  flat = {k: v for k, v in flat.items() if k not in dropped}
  flat = add_class_slot(unstack_scanned(flat))
  tree = renumber_pre_linen(traverse_util.unflatten_dict(flat, sep="/"))
  return tree
