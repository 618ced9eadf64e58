"""`load_backbone`: any supported checkpoint -> the backbone weights merged into an initialised tree."""

from __future__ import annotations

import logging
import os

from vit_adapt.checkpoints import merge as merge_lib
from vit_adapt.checkpoints import readers, sources


def load_backbone(path: str, params: dict, *, config) -> dict:
  """Loads `path` and returns `params` with its weights merged in.

  `path` is a Google `.npz` (any layout), a timm / Hugging Face `.safetensors`, `.pth` or `.bin`, or a vit_adapt
  model directory (from `convert` or a training run: a workdir with `model/` inside works too). The position
  embedding is resampled when the grid differs, the head is re-initialised (the fresh head of `params` kept) when
  the class count differs, and any other mismatch raises one UserError listing every missing, unexpected and
  mis-shaped name.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    return _from_model_dir(path, params)
  tensors = readers.read_tensors(path)
  loaded, _ = sources.auto(tensors, config)
  return merge_lib.merge(loaded, params, source=path)


def _from_model_dir(path: str, params: dict) -> dict:
  """Backbone weights of a vit_adapt model directory, plus those method parameters the target also has."""
  from vit_adapt.checkpoints import model_dir as export
  _, _, _, variables = export.load_model_dir(path)
  src = merge_lib.flat(variables["params"])
  tgt = merge_lib.flat(params)
  keep = {p: v for p, v in src.items() if merge_lib.is_backbone_name(p) or p in tgt}
  ignored = sorted(set(src) - set(keep))
  if ignored:
    logging.info("%s: ignoring %d parameters of its method that this model does not have (%s ...).", path,
                 len(ignored), ", ".join(ignored[:3]))
  from flax import traverse_util
  return merge_lib.merge(traverse_util.unflatten_dict(keep, sep="/"), params, source=path)
