"""The registry of checkpoint sources for `python -m vit_adapt.convert --source=NAME`.

A source turns the tensors of a foreign file into our parameter tree:

  fn(tensors: dict[str, np.ndarray], config) -> (params, inferred)

  params    nested dict with our names (backbone names as in `vit_adapt.models.vit`, method parameters in the
            method's sub-trees); shapes as stored (the merge resamples the position embedding if needed).
  inferred  config fields the shapes tell that the generic backbone inspection cannot, as
            {'method.bottleneck': 16, 'method.num_queries': 8, ...} ('/'-free dotted config paths). `convert`
            fills them in, or fails when the config says otherwise. The backbone architecture and the class
            count are inferred by `convert` itself from the backbone names.

`npz` and `timm` live here. A method with an official code adds `official-<method>` from its own package
(`vit_adapt/methods/<method>/official.py` calls `register_source` when the method registers), so this package
never imports a method.
"""

from __future__ import annotations

from typing import Callable

import ml_collections
import numpy as np

from vit_adapt.checkpoints import google, timm_vit, videomae
from vit_adapt.checkpoints.readers import Tensors
from vit_adapt.errors import UserError
from vit_adapt.models import vit

Converter = Callable[[Tensors, ml_collections.ConfigDict], tuple[dict, dict]]
_SOURCES: dict[str, Converter] = {}


def register_source(name: str, fn: Converter) -> Converter:
  if name in _SOURCES and _SOURCES[name] is not fn:
    raise ValueError(f"checkpoint source {name!r} registered twice")
  _SOURCES[name] = fn
  return fn


def source_names() -> list[str]:
  return sorted(_SOURCES)


def get_source(name: str) -> Converter:
  if name not in _SOURCES:
    raise UserError(f"--source={name!r} is not a checkpoint source. Valid sources: {', '.join(sorted(_SOURCES))}.")
  return _SOURCES[name]


def num_heads_of(config) -> int:
  m = config.model
  return vit.decode_variant(m.variant, width=m.get("width", 0), depth=m.get("depth", 0),
                            mlp_dim=m.get("mlp_dim", 0), num_heads=m.get("num_heads", 0)).num_heads


def encodes_heads(tensors: Tensors) -> bool:
  """Whether the file's shapes tell the attention head count: a Google (D, H, dh) query kernel does; timm's
  fused qkv (3D, D) and Hugging Face's (D, D) query weights do not (converted with the config's head count)."""
  return google.is_google_vit(tensors)


def _conversion_heads(tensors: Tensors, config) -> int:
  """The head count a timm/HF file is split with: the config's, unless the file's width does not divide by it
  (a file of another width: the contradiction is reported after conversion, and its standard head count or one
  head keeps the split well-defined until then)."""
  heads = num_heads_of(config)
  w = tensors.get("patch_embed.proj.weight")
  if w is None:
    w = next((v for k, v in tensors.items() if k.endswith("embeddings.patch_embeddings.projection.weight")), None)
  width = int(w.shape[0]) if w is not None and np.ndim(w) == 4 else 0
  if not width or width % heads == 0:
    return heads
  standard = [vit._HEADS[n] for n, d in vit._WIDTH.items() if d == width]  # pylint: disable=protected-access
  return standard[0] if standard else 1


def from_npz(tensors: Tensors, config) -> tuple[dict, dict]:
  """Google `.npz` in any layout (original/AugReg pre-Linen, big_vision native, scan-stacked)."""
  if not google.is_google_vit(tensors):
    raise UserError(_not_a(tensors, "a Google ViT .npz (no 'embedding/kernel')"))
  return google.google_to_params(tensors), {}


def from_timm(tensors: Tensors, config) -> tuple[dict, dict]:
  """timm or Hugging Face ViT weights; names this backbone does not have are kept and reported as unexpected."""
  if not (timm_vit.is_timm_vit(tensors) or timm_vit.is_hf_vit(tensors)):
    raise UserError(_not_a(tensors, "a timm/Hugging Face ViT state dict (no 'patch_embed.proj.weight')"))
  params, leftover = timm_vit.timm_to_params(tensors, _conversion_heads(tensors, config))
  for name, w in leftover.items():  # '.'-joined names stay one key so the report shows them verbatim
    params[name] = w
  return params, {}


def from_videomae(tensors: Tensors, config) -> tuple[dict, dict]:
  """VideoMAE's released `.pth` (fine-tuned or pre-training) for the `tubelet` video model."""
  if not videomae.is_videomae(tensors):
    raise UserError(_not_a(tensors, "a VideoMAE checkpoint (no 5-D 'patch_embed.proj.weight')"))
  params, leftover = videomae.videomae_to_params(tensors, num_heads_of(config))
  for name, w in leftover.items():
    params[name] = w
  return params, {}


def auto(tensors: Tensors, config) -> tuple[dict, dict]:
  """Detects the layout from the names (used by `load_backbone` for `config.model.init`)."""
  if google.is_google_vit(tensors):
    return from_npz(tensors, config)
  if videomae.is_videomae(tensors):
    return from_videomae(tensors, config)
  if timm_vit.is_timm_vit(tensors) or timm_vit.is_hf_vit(tensors):
    return from_timm(tensors, config)
  raise UserError(_not_a(tensors, "a ViT checkpoint vit_adapt knows (Google .npz, timm or Hugging Face names)"))


def _not_a(tensors: Tensors, what: str) -> str:
  names = sorted(tensors)[:8]
  return (f"the checkpoint is not {what}. Its first names: {names}. For checkpoints of a method's official "
          f"code use --source=official-<method> (sources: {', '.join(source_names())}).")


register_source("npz", from_npz)
register_source("timm", from_timm)
register_source("videomae", from_videomae)
