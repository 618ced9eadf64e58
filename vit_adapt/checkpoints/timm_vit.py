"""timm / Hugging Face ViT state dicts -> the backbone's Linen parameter tree.

Contract (reused by the official-code importers of DyT, Sparse-Tuning and SynQT, whose backbones are timm ViTs):

  params, leftover = timm_to_params(tensors, num_heads, prefix="")

  tensors    flat {name: np.ndarray} as read from the file (PyTorch layout, Linear weights [out, in]).
  num_heads  attention heads (a fused `qkv` weight does not tell it).
  prefix     a name prefix in front of the timm names (e.g. 'backbone.'); only names with it are mapped.
  params     nested dict with the backbone names of `vit_adapt.models.vit` (cls, embedding, Transformer/...,
             head) in the Linen layouts (HWIO conv kernel, (D, H, dh) query/key/value, (H, dh, D) out).
             The position embedding keeps timm's shape; `load_backbone`/`merge` resample it if needed.
  leftover   every input tensor that was not consumed, under its original name (a method's own weights,
             layer-scale or q/k-norm weights this backbone does not have, ...). Nothing is silently dropped:
             the caller maps the leftover or reports it as unexpected.

Hugging Face `transformers` ViT names (`vit.embeddings...`) are renamed to timm names first
(`hf_to_timm_names`), so `timm_to_params` accepts both.
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from vit_adapt.checkpoints.readers import Tensors

# timm name (after the prefix) -> (our '/'-joined path, transform kind)
_TOP = {
    "cls_token": ("cls", "copy"),
    "pos_embed": ("Transformer/posembed_input/pos_embedding", "posemb"),
    "patch_embed.proj.weight": ("embedding/kernel", "conv"),
    "patch_embed.proj.bias": ("embedding/bias", "copy"),
    "norm.weight": ("Transformer/encoder_norm/scale", "copy"),
    "norm.bias": ("Transformer/encoder_norm/bias", "copy"),
    "head.weight": ("head/kernel", "linear"),
    "head.bias": ("head/bias", "copy"),
}
_BLOCK = {
    "norm1.weight": ("LayerNorm_0/scale", "copy"),
    "norm1.bias": ("LayerNorm_0/bias", "copy"),
    "norm2.weight": ("LayerNorm_1/scale", "copy"),
    "norm2.bias": ("LayerNorm_1/bias", "copy"),
    "attn.proj.weight": ("MultiHeadDotProductAttention_0/out/kernel", "out_proj"),
    "attn.proj.bias": ("MultiHeadDotProductAttention_0/out/bias", "copy"),
    "mlp.fc1.weight": ("MlpBlock_0/Dense_0/kernel", "linear"),
    "mlp.fc1.bias": ("MlpBlock_0/Dense_0/bias", "copy"),
    "mlp.fc2.weight": ("MlpBlock_0/Dense_1/kernel", "linear"),
    "mlp.fc2.bias": ("MlpBlock_0/Dense_1/bias", "copy"),
}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)")


def is_timm_vit(tensors: Tensors, prefix: str = "") -> bool:
  return f"{prefix}patch_embed.proj.weight" in tensors


def is_hf_vit(tensors: Tensors) -> bool:
  return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in tensors)


def linear_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch Linear weight [out, in] -> Flax Dense kernel [in, out]."""
  return np.ascontiguousarray(w.T)


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch conv weight OIHW -> Flax HWIO."""
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _transform(kind: str, w: np.ndarray, num_heads: int) -> np.ndarray:
  if kind == "copy":
    return np.asarray(w)
  if kind == "linear":
    return linear_kernel(w)
  if kind == "conv":
    return conv_kernel(w)
  if kind == "out_proj":  # (D_out, D_in) -> (H, dh, D_out)
    d = w.shape[1]
    return linear_kernel(w).reshape(num_heads, d // num_heads, w.shape[0])
  if kind == "posemb":
    # timm's `no_embed_class` ViTs (like big_vision) give the class token no position embedding: their
    # pos_embed is (1, g*g, D) with no class slot. A zero slot computes the same thing in our layout.
    n = w.shape[1]
    if int(round(np.sqrt(n))) ** 2 == n:
      return np.concatenate([np.zeros_like(w[:, :1]), w], axis=1)
    return np.asarray(w)
  raise ValueError(kind)


def split_qkv(weight: np.ndarray, bias: np.ndarray | None, num_heads: int) -> dict[str, np.ndarray]:
  """timm's fused qkv ([q; k; v] rows, (3D, D)) -> {'query/kernel': (D, H, dh), 'query/bias': (H, dh), ...}."""
  d = weight.shape[1]
  dh = d // num_heads
  out = {}
  for j, name in enumerate(("query", "key", "value")):
    out[f"{name}/kernel"] = linear_kernel(weight[j * d:(j + 1) * d]).reshape(d, num_heads, dh)
    if bias is not None:
      out[f"{name}/bias"] = np.asarray(bias[j * d:(j + 1) * d]).reshape(num_heads, dh)
  return out


def timm_to_params(tensors: Tensors, num_heads: int, prefix: str = "") -> tuple[dict, Tensors]:
  """See the module docstring for the contract."""
  if is_hf_vit(tensors) and not is_timm_vit(tensors, prefix):
    tensors, prefix = hf_to_timm_names(tensors), ""
  flat: dict[str, np.ndarray] = {}
  leftover: Tensors = {}
  for name, w in tensors.items():
    if not name.startswith(prefix):
      leftover[name] = w
      continue
    rel = name[len(prefix):]
    if rel in _TOP:
      path, kind = _TOP[rel]
      flat[path] = _transform(kind, w, num_heads)
      continue
    m = _BLOCK_RE.fullmatch(rel)
    if m and m.group(2) in _BLOCK:
      path, kind = _BLOCK[m.group(2)]
      flat[f"Transformer/encoderblock_{m.group(1)}/{path}"] = _transform(kind, w, num_heads)
    elif m and m.group(2) == "attn.qkv.weight":
      bias = tensors.get(f"{prefix}blocks.{m.group(1)}.attn.qkv.bias")
      for k, v in split_qkv(w, bias, num_heads).items():
        flat[f"Transformer/encoderblock_{m.group(1)}/MultiHeadDotProductAttention_0/{k}"] = v
    elif m and m.group(2) == "attn.qkv.bias":
      continue  # consumed with the weight
    else:
      leftover[name] = w
  return traverse_util.unflatten_dict(flat, sep="/"), leftover


# Hugging Face transformers ViTModel / ViTForImageClassification names -> timm names.
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")


def hf_to_timm_names(tensors: Tensors) -> Tensors:
  """Renames a transformers ViT state dict to timm names (q/k/v fused into qkv); unknown names pass through."""
  out: Tensors = {}
  qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
  for name, w in tensors.items():
    rel = name[len("vit."):] if name.startswith("vit.") else name
    if rel in _HF_TOP:
      out[_HF_TOP[rel]] = w
      continue
    if rel.startswith("classifier."):
      out["head." + rel[len("classifier."):]] = w
      continue
    m = _HF_LAYER_RE.fullmatch(rel)
    if m and m.group(2) in _HF_BLOCK:
      out[f"blocks.{m.group(1)}.{_HF_BLOCK[m.group(2)]}.{m.group(3)}"] = w
    elif m and m.group(2).startswith("attention.attention."):
      qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2).rsplit(".", 1)[1]] = w
    else:
      out[name] = w
  for (i, kind), parts in qkv.items():
    if set(parts) == {"query", "key", "value"}:
      out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate([parts["query"], parts["key"], parts["value"]], 0)
    else:
      for p, w in parts.items():
        out[f"vit.encoder.layer.{i}.attention.attention.{p}.{kind}"] = w
  return out
