"""`convert --source=official-sparse-tuning`: a state dict of the official code (liuting20/Sparse-Tuning) -> ours.

The official image model is a timm 0.4.12 ViT (EViT variant) whose blocks carry `adaptmlp` (the released
five-linear Dense Adapter) and whose head the training script replaces by `Sequential(BatchNorm1d(affine=False),
Linear)`. Backbone names go through the shared `timm_vit.timm_to_params`; the rest map as

  blocks.{i}.adaptmlp.{down1,down2,up1,down3,up2}.{weight,bias}
                          -> Transformer/encoderblock_{i}/adapter/{same}/{kernel,bias}   (kernel = weight.T)
  head.1.{weight,bias}    -> head/{kernel,bias}                                          (C inferred by convert)
  head.0.running_{mean,var} -> batch_stats: head_bn/{mean,var}    (head.0.num_batches_tracked is unused: the
                                                                   official BN has a fixed momentum)

and the converted model is `dense_adapter='released'` with `head='bn_linear'` (or 'linear' for a plain `head.*`),
which this source reports as inferred config fields. The official module hard-codes width 768.

Non-parameter collections: the BatchNorm running statistics are returned inside the converted tree under the
top-level key `batch_stats` (never a parameter name); `split_collections` separates them, and `convert` puts them
in the variables' `batch_stats` collection. A trainable-only state dict (adapters + head, no backbone names)
converts too; the backbone then comes from `config.model.init`.
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from vit_adapt.checkpoints import sources, timm_vit
from vit_adapt.checkpoints.readers import Tensors
from vit_adapt.errors import UserError

ADAPTER_LINEARS = ("down1", "down2", "up1", "down3", "up2")
COLLECTIONS = ("batch_stats",)  # top-level keys of the converted tree that are collections, not parameters
_ADAPTER_RE = re.compile(r"blocks\.(\d+)\.adaptmlp\.(\w+)\.(weight|bias)")
_BN = {"head.0.running_mean": "batch_stats/head_bn/mean", "head.0.running_var": "batch_stats/head_bn/var"}


def is_official_sparse_tuning(tensors: Tensors) -> bool:
  return any(_ADAPTER_RE.fullmatch(k) for k in tensors)


def sparse_tuning_to_tree(tensors: Tensors, num_heads: int) -> tuple[dict, dict]:
  """-> (tree: params + a `batch_stats` entry, inferred config fields). Unknown names stay, verbatim."""
  flat: dict[str, np.ndarray] = {}
  rest: Tensors = {}
  bad_adapter = []
  for name, w in tensors.items():
    m = _ADAPTER_RE.fullmatch(name)
    if m:
      if m.group(2) not in ADAPTER_LINEARS:
        bad_adapter.append(name)
        continue
      leaf = "kernel" if m.group(3) == "weight" else "bias"
      value = timm_vit.linear_kernel(w) if leaf == "kernel" else np.asarray(w)
      flat[f"Transformer/encoderblock_{m.group(1)}/adapter/{m.group(2)}/{leaf}"] = value
    elif name in _BN:
      flat[_BN[name]] = np.asarray(w, np.float32)
    elif name == "head.0.num_batches_tracked":
      continue
    elif name.startswith("head.1."):
      rest["head." + name[len("head.1."):]] = w  # the Linear behind the BatchNorm: timm's plain head names
    else:
      rest[name] = w
  if bad_adapter:
    raise UserError(f"official-sparse-tuning: adapter tensors {bad_adapter[:4]} are not part of the released "
                    f"Dense Adapter (expected {', '.join(ADAPTER_LINEARS)}). Was the checkpoint trained with a "
                    "modified adapter?")
  params, leftover = timm_vit.timm_to_params(rest, num_heads)
  flat.update(traverse_util.flatten_dict(params, sep="/"))
  tree = traverse_util.unflatten_dict(flat, sep="/")
  for name, w in leftover.items():  # reported by the merge as unexpected, verbatim
    tree[name] = w
  inferred = {"method.dense_adapter": "released"}
  if "head.1.weight" in tensors or "head.0.running_mean" in tensors:
    inferred["method.head"] = "bn_linear"
  elif "head.weight" in tensors:
    inferred["method.head"] = "linear"
  return tree, inferred


def split_collections(tree: dict) -> tuple[dict, dict]:
  """A converted tree -> (params, {collection: tree}) (e.g. {'batch_stats': {'head_bn': {...}}})."""
  params = {k: v for k, v in tree.items() if k not in COLLECTIONS}
  return params, {k: tree[k] for k in COLLECTIONS if k in tree}


def from_official_sparse_tuning(tensors: Tensors, config) -> tuple[dict, dict]:
  """The `official-sparse-tuning` source (contract in `checkpoints/sources.py`, plus the `batch_stats` entry)."""
  if not is_official_sparse_tuning(tensors):
    names = sorted(tensors)[:6]
    raise UserError("this is not an official Sparse-Tuning checkpoint: no 'blocks.<i>.adaptmlp.*' tensors "
                    f"(first names: {names}). Save the official model with torch.save(model.state_dict(), path).")
  return sparse_tuning_to_tree(tensors, sources.num_heads_of(config))


def to_variables(tensors: Tensors, config) -> tuple[dict, dict]:
  """Convenience for library users: -> ({'params': ..., 'batch_stats': ...}, inferred)."""
  tree, inferred = from_official_sparse_tuning(tensors, config)
  params, cols = split_collections(tree)
  return {"params": params, **cols}, inferred


sources.register_source("official-sparse-tuning", from_official_sparse_tuning)
