"""The BEiT-style segmentation backbone's extra names (official DyT `dense_tasks/Segmentation/backbone/`) -> ours.

The official segmentation backbone is the classification ViT plus the pyramid's transposed convolutions; those
map into the dense model's head scope (`models/upernet.py` FeaturePyramid, under `head/pyramid/`):

  fpn1.0.{weight,bias}   -> head/pyramid/fpn1_0/{kernel,bias}   (2x2 transposed conv, stride 4 level, first)
  fpn1.2.{weight,bias}   -> head/pyramid/fpn1_1/{kernel,bias}   (after the GELU, fpn1.1)
  fpn2.0.{weight,bias}   -> head/pyramid/fpn2/{kernel,bias}     (stride 8 level)

kernel = weight (C_in, C_out, 2, 2) transposed to (2, 2, C_in, C_out). The official configs also build every
block with a BEiT relative position bias (`use_rel_pos_bias=True`: `blocks.{i}.attn.relative_position_bias_table`,
zero-initialised, and its index buffer); our ViT has none, so a table converts only while it is all zeros (the
backbone as initialised) and a trained, non-zero one is refused rather than silently dropped.
"""

from __future__ import annotations

import re

import numpy as np

from vit_adapt.checkpoints.readers import Tensors
from vit_adapt.errors import UserError

_FPN_RE = re.compile(r"(fpn1\.0|fpn1\.2|fpn2\.0)\.(weight|bias)")
_FPN_NAMES = {"fpn1.0": "fpn1_0", "fpn1.2": "fpn1_1", "fpn2.0": "fpn2"}
_REL_POS_RE = re.compile(r"blocks\.\d+\.attn\.relative_position_(bias_table|index)")


def is_segmentation_backbone(tensors: Tensors) -> bool:
  return any(_FPN_RE.fullmatch(k) for k in tensors)


def pyramid_to_params(tensors: Tensors, source: str) -> tuple[dict[str, np.ndarray], Tensors]:
  """-> (flat `head/pyramid/...` params, the other tensors), relative-position entries checked and removed."""
  nonzero = sorted(k for k, w in tensors.items()
                   if k.endswith("relative_position_bias_table") and np.any(np.asarray(w) != 0))
  if nonzero:
    raise UserError(f"{source}: {nonzero[:3]} hold a trained BEiT relative position bias (use_rel_pos_bias=True), "
                    "which vit_adapt's ViT does not implement; only a backbone whose tables are still zero (as "
                    "initialised) converts.")
  flat: dict[str, np.ndarray] = {}
  rest: Tensors = {}
  for name, w in tensors.items():
    m = _FPN_RE.fullmatch(name)
    if m:
      w = np.asarray(w)
      leaf = "kernel" if m.group(2) == "weight" else "bias"
      flat[f"head/pyramid/{_FPN_NAMES[m.group(1)]}/{leaf}"] = w.transpose(2, 3, 0, 1) if leaf == "kernel" else w
    elif not _REL_POS_RE.fullmatch(name):
      rest[name] = w
  return flat, rest
