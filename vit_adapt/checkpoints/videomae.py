"""VideoMAE's released PyTorch checkpoints (MCG-NJU/VideoMAE, `.pth`, read with `torch.load(weights_only=True)`:
tensors only) -> the `tubelet` video model's names (`vit_adapt.models.video`).

Fine-tuned checkpoints hold the ViT under its plain names, self-supervised (pre-training) ones under `encoder.`
with a decoder beside it; both convert:

  patch_embed.proj.{weight (D, 3, t, P, P), bias}   -> embedding/{kernel (t, P, P, 3, D), bias}
  blocks.{i}.attn.qkv.weight + attn.q_bias, v_bias  -> .../MultiHeadDotProductAttention_0/{query,key,value}
                                                       (the key bias is zero, as VideoMAE's attention has it)
  blocks.{i}.{norm1,norm2,attn.proj,mlp.fc1,mlp.fc2} -> as timm's ViT (`timm_vit.timm_to_params`)
  fc_norm.{weight,bias}                              -> fc_norm/{scale,bias} (a pre-training checkpoint has none:
                                                       identity, as VideoMAE's fine-tuning starts it)
  head.{weight,bias}                                 -> head/{kernel,bias}

Dropped, as VideoMAE's own fine-tuning drops them: the decoder (`decoder.*`, `encoder_to_decoder.*`, `mask_token`)
and the encoder's final `norm.*` (the identity when the head mean-pools). The position table is the fixed
sinusoid the model computes; a checkpoint with learned positions (`pos_embed`) or layer scale (`gamma_*`) is
refused with a UserError.
"""

from __future__ import annotations

import logging

import numpy as np
from flax import traverse_util

from vit_adapt.checkpoints import timm_vit
from vit_adapt.checkpoints.readers import Tensors
from vit_adapt.errors import UserError

_DROPPED_PREFIXES = ("decoder.", "encoder_to_decoder.", "mask_token", "norm.")


def is_videomae(tensors: Tensors) -> bool:
  w = tensors.get("patch_embed.proj.weight", tensors.get("encoder.patch_embed.proj.weight"))
  return w is not None and np.ndim(w) == 5


def videomae_to_params(tensors: Tensors, num_heads: int) -> tuple[dict, Tensors]:
  """-> (params tree, leftover tensors this model does not have)."""
  if any(k.startswith("encoder.") for k in tensors):
    tensors = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
  tensors = {k: np.asarray(v) for k, v in tensors.items() if not k.startswith(_DROPPED_PREFIXES)}
  bad = sorted(k for k in tensors if k == "pos_embed" or ".gamma_" in k)
  if bad:
    raise UserError(f"VideoMAE checkpoint with {bad[:2]}: learned position embeddings and layer scale are not part "
                    "of the tubelet model (VideoMAE ViT-B uses the fixed sinusoid and no layer scale).")
  flat = {"embedding/kernel": np.transpose(tensors.pop("patch_embed.proj.weight"), (2, 3, 4, 1, 0)),
          "embedding/bias": tensors.pop("patch_embed.proj.bias")}
  if "fc_norm.weight" in tensors:
    flat["fc_norm/scale"], flat["fc_norm/bias"] = tensors.pop("fc_norm.weight"), tensors.pop("fc_norm.bias")
  else:
    width = flat["embedding/bias"].shape[0]
    logging.info("VideoMAE checkpoint without fc_norm (a pre-training checkpoint): fc_norm starts as the identity")
    flat["fc_norm/scale"], flat["fc_norm/bias"] = np.ones(width, np.float32), np.zeros(width, np.float32)
  for name in [k for k in tensors if k.endswith(".attn.q_bias")]:
    block = name[:-len(".attn.q_bias")]
    q, v = tensors.pop(name), tensors.pop(f"{block}.attn.v_bias")
    tensors[f"{block}.attn.qkv.bias"] = np.concatenate([q, np.zeros_like(q), v])
  params, leftover = timm_vit.timm_to_params(tensors, num_heads)
  flat.update(traverse_util.flatten_dict(params, sep="/"))
  return traverse_util.unflatten_dict(flat, sep="/"), leftover
