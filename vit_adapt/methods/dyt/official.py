"""`convert --source=official-dyt`: a state dict of the official DyT code (NUS-HPC-AI-Lab/Dynamic-Tuning) -> ours.

The official image model is a timm ViT whose blocks carry an AdaptFormer-style adapter (`adaptmlp`) and a token
router (`mlp_token_select`); it implements MLP dispatch only. Backbone names go through the shared
`timm_vit.timm_to_params`; the DyT names map as

  blocks.{i}.adaptmlp.down_proj.{weight,bias}        -> Transformer/encoderblock_{i}/adapter/down/{kernel,bias}
  blocks.{i}.adaptmlp.up_proj.{weight,bias}          -> Transformer/encoderblock_{i}/adapter/up/{kernel,bias}
  blocks.{i}.mlp_token_select.mlp_head.{weight,bias} -> Transformer/encoderblock_{i}/router/{kernel,bias}

(kernel = weight.T). The official SEGMENTATION backbone (`dense_tasks/Segmentation/backbone/`) adds the BEiT
pyramid's transposed convolutions (`fpn1.*`, `fpn2.*` -> `head/pyramid/...` of the dense model, see
`checkpoints/beit_pyramid.py`, which also refuses trained relative position bias tables) and has no final
LayerNorm (an identity `encoder_norm` is written; the dense model reads block outputs only). The official VIDEO model (`video_vision_transformer_IN21K.py`: the same blocks per frame) adds
its attentive pooling head, which maps into the `head/` scope of the `frames` video model (`models/video.py`):

  query_token                                         -> head/query_token
  attentive_blocks.norm_{q,k,v}.{weight,bias}         -> head/norm_{q,k,v}/{scale,bias}
  attentive_blocks.cross_attn.{q,k,v}.weight          -> head/{q,k,v}/kernel
  attentive_blocks.cross_attn.{q_bias,v_bias}         -> head/{q_bias,v_bias}
  attentive_blocks.cross_attn.proj.{weight,bias}      -> head/proj/{kernel,bias}
  head.{weight,bias}                                  -> head/{kernel,bias} (as for images)

Inferred config fields: `method.bottleneck` (the adapter width), `method.num_experts` = 1
and `method.dispatch` = 'mlp'. The adapter scale is not stored in the checkpoint (1.0 for VTAB-1k, 0.1 for the
complete datasets): it comes from the config (`config.method.scale`). Training checkpoints of the official script
({'model': ..., 'optimizer': ..., 'args': Namespace}) convert as they are: `checkpoints.readers.read_torch`
allow-lists that argparse.Namespace for `torch.load(weights_only=True)` and keeps only the weights.
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from vit_adapt.checkpoints import beit_pyramid, sources, timm_vit
from vit_adapt.checkpoints.readers import Tensors
from vit_adapt.errors import UserError

_DYT_RE = re.compile(r"blocks\.(\d+)\.(adaptmlp\.(down_proj|up_proj)|mlp_token_select\.mlp_head)\.(weight|bias)")
_UNSUPPORTED_RE = re.compile(r"blocks\.\d+\.adaptmlp\.adapter_layer_norm_before\.|blocks\.\d+\.adaptmlp\.scale$")


def is_official_dyt(tensors: Tensors) -> bool:
  return any(k.startswith("blocks.") and ".mlp_token_select." in k for k in tensors)


_ATTENTIVE_RE = re.compile(r"attentive_blocks\.(?:(norm_[qkv])\.(weight|bias)|cross_attn\.(?:([qkv]|proj)\.(weight|bias)"
                           r"|([qv]_bias)))")


def is_official_video(tensors: Tensors) -> bool:
  return "query_token" in tensors or any(k.startswith("attentive_blocks.") for k in tensors)


def attentive_head_to_params(tensors: Tensors) -> tuple[dict[str, np.ndarray], Tensors]:
  """The official video model's pooling head -> flat `head/...` params; -> (flat, the other tensors)."""
  flat: dict[str, np.ndarray] = {}
  rest: Tensors = {}
  for name, w in tensors.items():
    w = np.asarray(w)
    m = _ATTENTIVE_RE.fullmatch(name)
    if name == "query_token":
      flat["head/query_token"] = w
    elif m and m.group(1):
      flat[f"head/{m.group(1)}/{'scale' if m.group(2) == 'weight' else 'bias'}"] = w
    elif m and m.group(3):
      leaf = "kernel" if m.group(4) == "weight" else "bias"
      flat[f"head/{m.group(3)}/{leaf}"] = timm_vit.linear_kernel(w) if leaf == "kernel" else w
    elif m:
      flat[f"head/{m.group(5)}"] = w
    else:
      rest[name] = w
  return flat, rest


def dyt_to_params(tensors: Tensors, num_heads: int) -> tuple[dict, dict]:
  """-> (params tree, inferred config fields). Names neither DyT nor timm stay verbatim (merge reports them)."""
  unsupported = sorted(k for k in tensors if _UNSUPPORTED_RE.search(k))
  if unsupported:
    raise UserError(f"official-dyt: {unsupported[:3]} belong to an adapter variant the DyT release does not train "
                    "(adapter LayerNorm or learnable scale); only the released layernorm_option='none' adapter "
                    "with a fixed scale converts.")
  flat, others = attentive_head_to_params(tensors)
  if beit_pyramid.is_segmentation_backbone(others):
    pyramid, others = beit_pyramid.pyramid_to_params(others, "official-dyt")
    flat.update(pyramid)
    if "norm.weight" not in others:  # its features are block outputs: no final LayerNorm, which the dense model
      width = np.asarray(others["cls_token"]).shape[-1]  # never reads either; an identity one fills the slot
      flat.update({"Transformer/encoder_norm/scale": np.ones(width, np.float32),
                   "Transformer/encoder_norm/bias": np.zeros(width, np.float32)})
  rest: Tensors = {}
  for name, w in others.items():
    m = _DYT_RE.fullmatch(name)
    if not m:
      rest[name] = w
      continue
    block, kind, leaf = m.group(1), m.group(3) or "router", "kernel" if m.group(4) == "weight" else "bias"
    sub = {"down_proj": "adapter/down", "up_proj": "adapter/up", "router": "router"}[kind]
    flat[f"Transformer/encoderblock_{block}/{sub}/{leaf}"] = (
        timm_vit.linear_kernel(np.asarray(w)) if leaf == "kernel" else np.asarray(w))
  params, leftover = timm_vit.timm_to_params(rest, num_heads)
  flat.update(traverse_util.flatten_dict(params, sep="/"))
  tree = traverse_util.unflatten_dict(flat, sep="/")
  for name, w in leftover.items():
    tree[name] = w
  inferred = {"method.num_experts": 1, "method.dispatch": "mlp"}
  down = [w for k, w in tensors.items() if k.endswith("adaptmlp.down_proj.weight")]
  if down:
    inferred["method.bottleneck"] = int(down[0].shape[0])
  return tree, inferred


def from_official_dyt(tensors: Tensors, config) -> tuple[dict, dict]:
  """The `official-dyt` source (contract in `checkpoints/sources.py`)."""
  if not is_official_dyt(tensors):
    raise UserError("this is not an official DyT checkpoint: no 'blocks.<i>.mlp_token_select.*' tensors (first "
                    f"names: {sorted(tensors)[:6]}). Save the official model with torch.save(model.state_dict(), "
                    "path).")
  if config.method.name != "dyt":
    raise UserError(f"official-dyt converts into the 'dyt' method, but the config's method is "
                    f"{config.method.name!r}: use --config=configs/dyt_vtab.py.")
  video = config.get("video")
  frames = video is not None and video.get("model") == "frames"
  if is_official_video(tensors) and not frames:
    raise UserError("this is an official DyT VIDEO checkpoint (query_token / attentive_blocks.*): convert it with "
                    "a video config, e.g. --config=configs/dyt_video.py:task=k400.")
  if frames and not is_official_video(tensors):
    raise UserError("this is an official DyT IMAGE checkpoint (no query_token / attentive_blocks.*), but the "
                    "config builds the video model: use --config=configs/dyt_vtab.py, or start a video run from it "
                    "with --config.model.init.")
  if beit_pyramid.is_segmentation_backbone(tensors) and config.model.get("head", "linear") != "upernet":
    raise UserError("this is an official DyT SEGMENTATION backbone (fpn1.* / fpn2.* pyramid convolutions): convert "
                    "it with a segmentation config, e.g. --config=configs/dyt_ade20k.py:task=ade20k.")
  return dyt_to_params(tensors, sources.num_heads_of(config))


sources.register_source("official-dyt", from_official_dyt)
