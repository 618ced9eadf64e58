"""`convert --source=official-synqt`: a state dict of the official SynQT code (taolinzhang/SynQT) -> our tree.

The official model is a timm 0.4.12 ViT with a `synqt` sub-module; its backbone names are mapped by the shared
`timm_vit.timm_to_params`, the SynQT names here:

  synqt.q                                            -> qsm/queries              (L, T, D): T inferred
  synqt.feat_scale (1,)                              -> qsm/feat_scale           ()
  synqt.prompt_ffn.{i}.mlp.fc{1,2}                   -> qsm/layer_{i}/prompt_adapter/fc{1,2}
  synqt.qsm_block.{i}.{attn_scale,ffn_scale} (1,)    -> qsm/layer_{i}/{attn_scale,ffn_scale} ()
  synqt.qsm_block.{i}.{norm1,norm2}                  -> qsm/layer_{i}/{norm1,norm2}
  synqt.qsm_block.{i}.attn.{q_norm,kv_norm}          -> qsm/layer_{i}/{q_norm,kv_norm}
  synqt.qsm_block.{i}.attn.{q,k,v}_proj.mlp.fc{1,2}  -> qsm/layer_{i}/{q,k,v}_proj/fc{1,2}
  synqt.qsm_block.{i}.attn.proj.mlp.fc{1,2}          -> qsm/layer_{i}/out_proj/fc{1,2}
  synqt.qsm_block.{i}.mlp.mlp.fc{1,2}                -> qsm/layer_{i}/mlp/fc{1,2}
  synqt.mlp.mlp.fc{1,2}                              -> synqt_head/adapter/fc{1,2}
  synqt.out_norm / synqt.head_norm                   -> synqt_head/out_norm / synqt_head/head_norm
  synqt.out_combine.get_weight.fc1                   -> synqt_head/weight
  head.{weight,bias}                                 -> head                     (C, D): C inferred

`synqt.pre_norm.*` and `synqt.out_combine.weight` exist in the official module but are never used by its
forward pass; they are dropped (and counted in the log line). A trainable-only state dict (no backbone names)
converts too: the backbone then comes from `config.model.init`.
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from vit_adapt.checkpoints import sources, timm_vit
from vit_adapt.checkpoints.readers import Tensors
from vit_adapt.errors import UserError

# Official module path (after 'synqt.') -> our path; '{i}' is the layer index.
_LAYER = {
    "prompt_ffn.{i}.mlp.{fc}": "qsm/layer_{i}/prompt_adapter/{fc}",
    "qsm_block.{i}.norm1": "qsm/layer_{i}/norm1",
    "qsm_block.{i}.norm2": "qsm/layer_{i}/norm2",
    "qsm_block.{i}.attn.q_norm": "qsm/layer_{i}/q_norm",
    "qsm_block.{i}.attn.kv_norm": "qsm/layer_{i}/kv_norm",
    "qsm_block.{i}.attn.q_proj.mlp.{fc}": "qsm/layer_{i}/q_proj/{fc}",
    "qsm_block.{i}.attn.k_proj.mlp.{fc}": "qsm/layer_{i}/k_proj/{fc}",
    "qsm_block.{i}.attn.v_proj.mlp.{fc}": "qsm/layer_{i}/v_proj/{fc}",
    "qsm_block.{i}.attn.proj.mlp.{fc}": "qsm/layer_{i}/out_proj/{fc}",
    "qsm_block.{i}.mlp.mlp.{fc}": "qsm/layer_{i}/mlp/{fc}",
    "mlp.mlp.{fc}": "synqt_head/adapter/{fc}",
    "out_norm": "synqt_head/out_norm",
    "head_norm": "synqt_head/head_norm",
    "out_combine.get_weight.fc1": "synqt_head/weight",
}
_SCALARS = {"feat_scale": "qsm/feat_scale", "qsm_block.{i}.attn_scale": "qsm/layer_{i}/attn_scale",
            "qsm_block.{i}.ffn_scale": "qsm/layer_{i}/ffn_scale"}
_UNUSED = re.compile(r"synqt\.(pre_norm\.\d+\.(weight|bias)|out_combine\.weight)")


def _compile(table: dict[str, str]):
  out = []
  for src, dst in table.items():
    pat = re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{fc\}", r"(?P<fc>fc[12])")
    out.append((re.compile(pat), dst))
  return out


_MODULES = _compile(_LAYER)
_SCALAR_RES = _compile(_SCALARS)


def _module_leaf(suffix: str, w: np.ndarray, is_norm: bool) -> tuple[str, np.ndarray]:
  """PyTorch Linear / LayerNorm leaf -> Flax Dense / LayerNorm leaf."""
  if suffix == "weight":
    return ("scale", np.asarray(w)) if is_norm else ("kernel", timm_vit.linear_kernel(w))
  return "bias", np.asarray(w)


def synqt_to_params(tensors: Tensors) -> tuple[dict, Tensors, list[str]]:
  """The `synqt.*` tensors -> (flat {our path: array}, leftover tensors, dropped unused names)."""
  flat, leftover, dropped = {}, {}, []
  for name, w in tensors.items():
    if not name.startswith("synqt."):
      leftover[name] = w
      continue
    if _UNUSED.fullmatch(name):
      dropped.append(name)
      continue
    rel = name[len("synqt."):]
    if rel == "q":
      flat["qsm/queries"] = np.asarray(w)
      continue
    for pat, dst in _SCALAR_RES:
      m = pat.fullmatch(rel)
      if m:
        flat[dst.format(**m.groupdict())] = np.asarray(w).reshape(())
        break
    else:
      module, _, suffix = rel.rpartition(".")
      for pat, dst in _MODULES:
        m = pat.fullmatch(module)
        if m and suffix in ("weight", "bias"):
          leaf, value = _module_leaf(suffix, w, is_norm="norm" in dst.rsplit("/", 1)[-1])
          flat[f"{dst.format(**m.groupdict())}/{leaf}"] = value
          break
      else:
        leftover[name] = w
  return flat, leftover, dropped


def from_official_synqt(tensors: Tensors, config) -> tuple[dict, dict]:
  """The `official-synqt` source (contract in `checkpoints/sources.py`); infers `method.num_queries`."""
  if "synqt.q" not in tensors:
    raise UserError("this is not an official SynQT checkpoint: it has no 'synqt.q' (the learnable queries). "
                    "Save the official model with torch.save(model.state_dict(), path) after set_synqt().")
  q = tensors["synqt.q"]
  if q.ndim != 3:
    raise UserError(f"synqt.q has shape {q.shape}; the official layout is (layers, queries, width).")
  flat, leftover, dropped = synqt_to_params(tensors)
  params: dict = {}
  if timm_vit.is_timm_vit(leftover) or "head.weight" in leftover:
    backbone, leftover = timm_vit.timm_to_params(leftover, sources.num_heads_of(config))
    params = backbone
  ours = traverse_util.unflatten_dict(flat, sep="/")
  params.update(ours)
  for name, w in leftover.items():  # reported by the merge as unexpected, verbatim
    params[name] = w
  if dropped:
    print(f"official-synqt: dropped {len(dropped)} tensors the official forward never uses "
          f"({sum(int(np.prod(tensors[n].shape)) for n in dropped)} values: synqt.pre_norm.*, "
          "synqt.out_combine.weight)")
  return params, {"method.num_queries": int(q.shape[1])}


sources.register_source("official-synqt", from_official_synqt)
