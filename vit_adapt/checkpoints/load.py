"""Backbone weights into an initialised tree: `load_backbone` (a checkpoint file) and `merge_model_params` (the
parameters of a vit_adapt model directory, which `vit_adapt.methods.init_variables` loads)."""

from __future__ import annotations

import logging
import os

from flax import traverse_util

from vit_adapt.checkpoints import merge as merge_lib
from vit_adapt.checkpoints import readers, sources, weights
from vit_adapt.errors import UserError


def load_backbone(path: str, params: dict, *, config) -> dict:
  """Loads `path` and returns `params` with its weights merged in.

  `path` is a name of `weights.NAMES` (downloaded once into a cache), a Google `.npz` (any layout), or a timm / Hugging Face `.safetensors`, `.pth` or `.bin` (a vit_adapt
  model directory is loaded by `vit_adapt.methods.init_variables`, which rebuilds its method's model). The position
  embedding is resampled when the grid differs, the head is re-initialised (the fresh head of `params` kept) when
  the class count differs, and any other mismatch raises one UserError listing every missing, unexpected and
  mis-shaped name.
  """
  path = weights.resolve(os.fspath(path))
  if os.path.isdir(path):
    raise UserError(f"{path} is a directory: a vit_adapt model directory is loaded with "
                    "vit_adapt.methods.init_variables (config.model.init), not as a checkpoint file.")
  tensors = readers.read_tensors(path)
  loaded, _ = sources.auto(tensors, config)
  return merge_lib.merge(loaded, params, source=path, heads_known=sources.encodes_heads(tensors))


def merge_model_params(trained: dict, params: dict, *, source: str) -> dict:
  """The backbone weights of a trained model's parameters, plus those method parameters `params` also has."""
  src = merge_lib.flat(trained)
  tgt = merge_lib.flat(params)
  keep = {p: v for p, v in src.items() if merge_lib.is_backbone_name(p) or p in tgt}
  ignored = sorted(set(src) - set(keep))
  if ignored:
    logging.info("%s: ignoring %d parameters of its method that this model does not have (%s ...).", source,
                 len(ignored), ", ".join(ignored[:3]))
  return merge_lib.merge(traverse_util.unflatten_dict(keep, sep="/"), params, source=source)
