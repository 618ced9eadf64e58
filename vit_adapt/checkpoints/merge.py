"""Merging converted weights into an initialised parameter tree, with one loud report of every mismatch.

The loaded tree uses the backbone's names (after a format conversion). Rules:
  * every backbone weight of the target must be in the file with its exact shape, except that the position
    embedding is resampled when only its grid differs, and the head is re-initialised (the target's fresh head
    is kept) when the class count differs or the file has no head;
  * a method's own parameters (adapters, prompts, LoRA, routers, ...) keep their initialisation when the file
    does not have them; if the file carries some method parameters it must carry all of them (an official-code
    checkpoint of a trained method); a dense model's decode heads (`head/decode/`, `head/auxiliary/`) likewise,
    on their own (a segmentation backbone's checkpoint carries the pyramid, not the heads);
  * a name in the file that the target does not have is unexpected.
Anything else is collected and raised as ONE `UserError` that lists every missing, unexpected and mis-shaped
name with shapes, headed by what architecture the file holds versus what the config asks for.
"""

from __future__ import annotations

import logging
import re

import numpy as np
from flax import traverse_util

from vit_adapt.checkpoints import posemb as posemb_lib
from vit_adapt.errors import UserError
from vit_adapt.models import vit

POSEMB = "Transformer/posembed_input/pos_embedding"
_BACKBONE = re.compile(
    r"^(cls|embedding/(kernel|bias)|Transformer/posembed_input/pos_embedding|Transformer/encoder_norm/(scale|bias)"
    r"|head/(kernel|bias)|fc_norm/(scale|bias)"
    r"|Transformer/encoderblock_\d+/(LayerNorm_[01]/(scale|bias)"
    r"|MultiHeadDotProductAttention_0/(query|key|value|out)/(kernel|bias)|MlpBlock_0/Dense_[01]/(kernel|bias)))$")

_DECODE_HEADS = re.compile(r"^head/(decode|auxiliary)/")


def is_backbone_name(path: str) -> bool:
  return bool(_BACKBONE.match(path))


def flat(tree) -> dict[str, np.ndarray]:
  return traverse_util.flatten_dict(dict(tree), sep="/") if tree else {}


def describe(flat_params: dict, heads_known: bool = True) -> dict:
  """What a flat backbone tree's shapes tell: width, patch, depth, heads, mlp_dim, grid, num_classes.

  `heads_known=False` for a tree converted from a timm / Hugging Face file: its (D, H, dh) query kernel was split
  with the config's head count, so it tells nothing about the file and `num_heads` is left out.
  """
  info = {}
  if "embedding/kernel" in flat_params:
    k = flat_params["embedding/kernel"].shape
    info.update(patch_size=int(k[0]), width=int(k[-1]))
  blocks = {int(m.group(1)) for p in flat_params for m in [re.match(r"Transformer/encoderblock_(\d+)/", p)] if m}
  if blocks:
    info["depth"] = max(blocks) + 1
  q = flat_params.get("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
  if q is not None and len(q.shape) == 3 and heads_known:
    info["num_heads"] = int(q.shape[1])
  mlp = flat_params.get("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel")
  if mlp is not None:
    info["mlp_dim"] = int(mlp.shape[-1])
  pe = flat_params.get(POSEMB)
  if pe is not None:
    g = int(round(np.sqrt(pe.shape[1] - 1)))
    info["grid"] = g if g * g == pe.shape[1] - 1 else None
  head = flat_params.get("head/kernel")
  if head is not None:
    info["num_classes"] = int(head.shape[-1])
  return info


def variant_name(info: dict) -> str:
  """Best-effort big_vision variant name ('B/16') from width, heads and MLP width (depth can be overridden).

  Without `num_heads` (a timm / HF file) the width and MLP width alone pick the variant, whose head count is
  then the standard one of the table in `vit_adapt.models.vit` (ViT-S: 6).
  """
  for name, width in vit._WIDTH.items():  # pylint: disable=protected-access
    if (width == info.get("width") and info.get("num_heads", vit._HEADS[name]) == vit._HEADS[name]  # pylint: disable=protected-access
        and info.get("mlp_dim", vit._MLP[name]) == vit._MLP[name] and "patch_size" in info):  # pylint: disable=protected-access
      return f"{name}/{info['patch_size']}"
  return ", ".join(f"{k} {info[k]}" for k in ("width", "depth", "num_heads", "mlp_dim", "patch_size") if k in info)


def _shape(x) -> tuple:
  return tuple(int(d) for d in np.shape(x)) if not hasattr(x, "shape") else tuple(int(d) for d in x.shape)


def merge(loaded: dict, target: dict, *, source: str, allow_head_reinit: bool = True,
          partial_backbone: bool = False, heads_known: bool = True) -> dict:
  """Returns `target` (nested params) with the weights of `loaded` (nested, backbone names) merged in.

  `source` names the file in messages. `partial_backbone`: the file holds only part of the model (a
  trainable-only state dict) and backbone weights it lacks keep the target's values (loaded from
  `config.model.init`). `heads_known`: see `describe`. Raises one UserError listing every problem.
  """
  src, tgt = flat(loaded), flat(target)
  notes: list[str] = []

  if POSEMB in src and POSEMB in tgt:
    s, t = _shape(src[POSEMB]), _shape(tgt[POSEMB])
    if s != t and len(s) == 3 and s[-1] == t[-1]:
      try:
        src[POSEMB] = posemb_lib.resample(np.asarray(src[POSEMB]), t[1])
        notes.append(f"position embedding resampled from {s[1]} to {t[1]} tokens")
      except ValueError as e:
        notes.append(str(e))  # left mis-shaped: reported below

  if "head/kernel" in tgt:
    head_ok = all(k in src and _shape(src[k]) == _shape(tgt[k]) for k in ("head/kernel", "head/bias"))
    if not head_ok and allow_head_reinit and _shape(src.get("embedding/kernel", ())) == _shape(
        tgt.get("embedding/kernel", ())):
      had = _shape(src["head/kernel"])[-1] if "head/kernel" in src else None
      src.pop("head/kernel", None)
      src.pop("head/bias", None)
      logging.warning("%s: %s; the classification head is freshly initialised for %d classes.", source,
                      f"the checkpoint's head has {had} classes" if had else "the checkpoint has no head",
                      _shape(tgt["head/kernel"])[-1])
      src["head/kernel"], src["head/bias"] = tgt["head/kernel"], tgt["head/bias"]

  # A dense model's decode heads (models/upernet.py) are trained from scratch by the official segmentation code:
  # a backbone checkpoint without them keeps their initialisation; one with some of them must have all.
  carries_decode = any(_DECODE_HEADS.match(p) for p in src)
  carries_method = any(not is_backbone_name(p) and not _DECODE_HEADS.match(p) for p in src)
  required = lambda p: ((is_backbone_name(p) and not partial_backbone)
                        or (carries_decode if _DECODE_HEADS.match(p) else carries_method and not is_backbone_name(p)))
  missing = [p for p in tgt if p not in src and required(p)]
  unexpected = [p for p in src if p not in tgt]
  misshaped = [p for p in src if p in tgt and _shape(src[p]) != _shape(tgt[p])]
  if missing or unexpected or misshaped:
    raise UserError(_report(source, src, tgt, missing, unexpected, misshaped, heads_known))

  for note in notes:
    logging.info("%s: %s.", source, note)
  merged = dict(tgt)
  for p, v in src.items():
    merged[p] = np.asarray(v).astype(np.asarray(tgt[p]).dtype) if hasattr(tgt[p], "dtype") else v
  return traverse_util.unflatten_dict(merged, sep="/")


def _report(source, src, tgt, missing, unexpected, misshaped, heads_known=True) -> str:
  have, want = describe(src, heads_known), describe(tgt)
  lines = [f"checkpoint {source} does not fit the model built from the config."]
  arch = ("width", "depth", "num_heads", "mlp_dim", "patch_size")
  if any(have.get(k) != want.get(k) for k in arch if k in have and k in want):
    lines.append(f"  The checkpoint holds a ViT {variant_name(have)} ({_arch(have)}); the config builds "
                 f"{variant_name(want)} ({_arch(want)}). Set --config.model.variant (and model.depth etc.) "
                 "to match the checkpoint, or use a checkpoint of the configured architecture.")
    if not heads_known and "/" not in variant_name(have):
      lines.append("  Its width is not a standard ViT's, and the head count cannot be inferred from a timm / "
                   "Hugging Face file (a fused qkv weight does not encode it): also pass "
                   "--config.model.num_heads=N with the head count of the model's card.")
  for title, names, fmt in (
      ("missing from the checkpoint", missing, lambda p: f"{p} {_shape(tgt[p])}"),
      ("unexpected in the checkpoint (not in the model)", unexpected, lambda p: f"{p} {_shape(src[p])}"),
      ("mis-shaped (checkpoint vs model)", misshaped, lambda p: f"{p} {_shape(src[p])} vs {_shape(tgt[p])}")):
    if names:
      lines.append(f"  {len(names)} {title}:")
      lines += [f"    {fmt(p)}" for p in sorted(names)]
  return "\n".join(lines)


def _arch(info: dict) -> str:
  return ", ".join(f"{k}={info[k]}" for k in ("width", "depth", "num_heads", "mlp_dim", "patch_size") if k in info)
