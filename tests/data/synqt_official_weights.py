"""A seeded official-format SynQT state dict (timm 0.4.12 ViT names + `synqt.*`), generated from numpy.

Used by `tests/test_synqt_convert.py` (to build the checkpoint the converter reads) and by
`synqt_make_reference.py` (to load the same weights into the official PyTorch model and record its logits).
The official module hard-codes width 768 and 12 layers; the test model keeps those and shrinks everything
else: image 32 px (2 x 2 patches of 16), MLP 192, so the whole state dict is ~35 M floats generated in a second.
"""

from __future__ import annotations

import numpy as np

WIDTH, DEPTH, HEADS, PATCH = 768, 12, 12, 16
IMAGE, MLP, QUERIES, CLASSES = 32, 192, 4, 5
SEED = 20240711


def official_shapes(queries: int = QUERIES, classes: int = CLASSES) -> dict[str, tuple[int, ...]]:
  d, g = WIDTH, IMAGE // PATCH
  s = {"cls_token": (1, 1, d), "pos_embed": (1, 1 + g * g, d), "patch_embed.proj.weight": (d, 3, PATCH, PATCH),
       "patch_embed.proj.bias": (d,), "norm.weight": (d,), "norm.bias": (d,), "head.weight": (classes, d),
       "head.bias": (classes,)}
  lin = lambda name, o, i: s.update({f"{name}.weight": (o, i), f"{name}.bias": (o,)})
  ln = lambda name: s.update({f"{name}.weight": (d,), f"{name}.bias": (d,)})
  adapter = lambda name, h: (lin(f"{name}.mlp.fc1", h, d), lin(f"{name}.mlp.fc2", d, h))
  for i in range(DEPTH):
    b = f"blocks.{i}"
    ln(f"{b}.norm1"), ln(f"{b}.norm2")
    lin(f"{b}.attn.qkv", 3 * d, d), lin(f"{b}.attn.proj", d, d)
    lin(f"{b}.mlp.fc1", MLP, d), lin(f"{b}.mlp.fc2", d, MLP)
  s["synqt.q"] = (DEPTH, queries, d)
  s["synqt.feat_scale"] = (1,)
  for i in range(DEPTH):
    ln(f"synqt.pre_norm.{i}")
    q = f"synqt.qsm_block.{i}"
    s[f"{q}.attn_scale"], s[f"{q}.ffn_scale"] = (1,), (1,)
    ln(f"{q}.norm1"), ln(f"{q}.norm2"), ln(f"{q}.attn.q_norm"), ln(f"{q}.attn.kv_norm")
    for p in ("q_proj", "k_proj", "v_proj", "proj"):
      adapter(f"{q}.attn.{p}", 8)
    adapter(f"{q}.mlp", 48)
    adapter(f"synqt.prompt_ffn.{i}", 48)
  adapter("synqt.mlp", 48)
  s["synqt.out_combine.weight"] = (1 + 3 * DEPTH,)
  lin("synqt.out_combine.get_weight.fc1", 3 * DEPTH, d)
  ln("synqt.out_norm"), ln("synqt.head_norm")
  return s


def official_state_dict(seed: int = SEED, **kw) -> dict[str, np.ndarray]:
  """float32 arrays; scales keep activations O(1) so every term of the forward matters."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in official_shapes(**kw).items():
    z = rng.standard_normal(shape, dtype=np.float32)
    if name.endswith("_scale"):
      w = rng.uniform(0.1, 1.0, shape).astype(np.float32)
    elif name == "synqt.q":
      w = rng.uniform(-1, 1, shape).astype(np.float32)
    elif "norm" in name and name.endswith(".weight"):
      w = 1.0 + 0.2 * z
    elif name.endswith(".bias") or name in ("cls_token", "pos_embed", "synqt.out_combine.weight"):
      w = 0.1 * z
    else:  # Linear / conv weights: unit-variance outputs
      w = z / np.sqrt(np.prod(shape[1:]))
    out[name] = np.ascontiguousarray(w, dtype=np.float32)
  # The official code ties head_norm to the backbone's final norm (shared storage): equal values in checkpoints.
  out["synqt.head_norm.weight"] = out["norm.weight"].copy()
  out["synqt.head_norm.bias"] = out["norm.bias"].copy()
  return out


def test_inputs() -> np.ndarray:
  """(2, 3, 32, 32) NCHW images."""
  return np.random.default_rng(SEED + 1).standard_normal((2, 3, IMAGE, IMAGE)).astype(np.float32)
