"""Makes tests/data/sparse_tuning_official_reference.npz by RUNNING the official Sparse-Tuning code.

The weights are not committed: `official_state_dict(seed)` regenerates them with numpy (importable without
torch), in the official code's names and PyTorch layouts, for a width-768 model (the official adapter hard-codes
768) with 12 blocks at 96 px (36 patches, so the test stays fast). q/k weights are larger than a fresh init so
the class-token attention is peaked and the top-k cut has a clear margin (with a fresh init neighbouring scores
differ by ~1e-6 and float rounding may flip a token); the script prints the smallest margin.

Run (outside the repository's environment assumptions: needs torch, timm 0.4.12 in a separate directory and a
checkout of liuting20/Sparse-Tuning at 550cc00):

  pip install --target /tmp/timm0412 timm==0.4.12 --no-deps
  PYTHONPATH=/tmp/timm0412 python tests/data/sparse_tuning_make_reference.py --official=/tmp/ref_st

Nothing of the official code is copied here; it is imported from --official. Its `models/__init__.py` (which also
imports the broken video model) is bypassed, and torchvision / torchprofile (imported by modules we do not use)
are replaced by empty stand-ins.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import os
import sys
import types

import numpy as np

WIDTH, DEPTH, HEADS, MLP, PATCH = 768, 12, 12, 3072, 16
IMAGE_SIZE, NUM_CLASSES, BATCH = 96, 10, 4
SPARSE_BLOCKS, KEEP_RATE = (3, 6, 9), 0.7
SEED = 0


def official_state_dict(seed: int = SEED) -> dict[str, np.ndarray]:
  """A deterministic official-format state dict (float32), adapters and BatchNorm head included."""
  rng = np.random.default_rng(seed)
  f32 = lambda a: np.asarray(a, np.float32)
  normal = lambda std, *shape: f32(rng.standard_normal(shape) * std)
  g = IMAGE_SIZE // PATCH
  sd = {
      "cls_token": normal(0.5, 1, 1, WIDTH),
      "pos_embed": normal(0.5, 1, 1 + g * g, WIDTH),
      "patch_embed.proj.weight": normal(0.05, WIDTH, 3, PATCH, PATCH),
      "patch_embed.proj.bias": normal(0.1, WIDTH),
  }
  for i in range(DEPTH):
    p = f"blocks.{i}."
    sd.update({
        p + "norm1.weight": f32(1.0 + rng.standard_normal(WIDTH) * 0.1), p + "norm1.bias": normal(0.1, WIDTH),
        p + "attn.qkv.weight": np.concatenate([normal(0.06, 2 * WIDTH, WIDTH), normal(0.03, WIDTH, WIDTH)]),
        p + "attn.qkv.bias": normal(0.1, 3 * WIDTH),
        p + "attn.proj.weight": normal(0.02, WIDTH, WIDTH), p + "attn.proj.bias": normal(0.02, WIDTH),
        p + "norm2.weight": f32(1.0 + rng.standard_normal(WIDTH) * 0.1), p + "norm2.bias": normal(0.1, WIDTH),
        p + "mlp.fc1.weight": normal(0.02, MLP, WIDTH), p + "mlp.fc1.bias": normal(0.02, MLP),
        p + "mlp.fc2.weight": normal(0.02, WIDTH, MLP), p + "mlp.fc2.bias": normal(0.02, WIDTH),
    })
    for name, (o, n) in {"down1": (64, WIDTH), "down2": (32, 64), "up1": (64, 32), "down3": (64, 96),
                         "up2": (WIDTH, 64)}.items():
      sd[f"{p}adaptmlp.{name}.weight"] = normal(0.05, o, n)
      sd[f"{p}adaptmlp.{name}.bias"] = normal(0.05, o)
  sd.update({
      "norm.weight": f32(1.0 + rng.standard_normal(WIDTH) * 0.1), "norm.bias": normal(0.1, WIDTH),
      "head.0.running_mean": normal(0.2, WIDTH),
      "head.0.running_var": f32(rng.uniform(0.5, 2.0, WIDTH)),
      "head.0.num_batches_tracked": np.asarray(7, np.int64),
      "head.1.weight": normal(0.05, NUM_CLASSES, WIDTH), "head.1.bias": normal(0.05, NUM_CLASSES),
  })
  return sd


def reference_images(seed: int = SEED) -> np.ndarray:
  """(B, H, W, 3) float32 in [-1, 1] (NHWC, our layout)."""
  return np.random.default_rng(seed + 1).uniform(-1, 1, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def fingerprint(sd: dict[str, np.ndarray]) -> np.ndarray:
  """A few sums that change if numpy ever generates different weights or images (the test checks them first)."""
  names = ("cls_token", "blocks.0.attn.qkv.weight", "blocks.11.adaptmlp.up2.weight", "head.1.weight")
  return np.asarray([np.sum(sd[n].astype(np.float64)) for n in names]
                    + [np.sum(reference_images().astype(np.float64))])


# ------------------------------------------------------------------------------------------------------------
# Running the official code.

class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Empty modules for `torchvision*` / `torchprofile` (imported at module level, never used for the forward)."""

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("torchvision", "torchprofile"):
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    m = types.ModuleType(spec.name)
    m.__path__ = []
    m.__getattr__ = lambda attr: type(attr, (), {"__init__": lambda self, *a, **k: None})
    return m

  def exec_module(self, module):
    pass


def run_official(official: str, fuse: bool, sd, images):
  import torch
  sys.meta_path.insert(0, _Stub())
  sys.path.insert(0, official)
  pkg = types.ModuleType("models")  # bypass models/__init__.py (it imports the video model)
  pkg.__path__ = [os.path.join(official, "models")]
  sys.modules["models"] = pkg
  from models import vit_image  # noqa: E402  (the official module, imported from the checkout)

  cfg = types.SimpleNamespace(ffn_adapt=True, ffn_option="parallel")
  model = vit_image.vit_base_patch16(base_keep_rate=KEEP_RATE, drop_loc=SPARSE_BLOCKS, num_classes=NUM_CLASSES,
                                     img_size=IMAGE_SIZE, tuning_config=cfg, fuse_token=fuse)
  # The official script's head hack: non-affine BatchNorm in front of the linear head.
  model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(WIDTH, affine=False, eps=1e-6), model.head)
  missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()},
                                              strict=True)
  assert not missing and not unexpected, (missing, unexpected)
  model.eval()
  margins = []

  def record_margin(module, inputs, output):  # output = (x, index, idx, cls_attn, left_tokens)
    if output[3] is not None:
      s = torch.sort(output[3], dim=1, descending=True).values
      margins.append(float((s[:, output[4] - 1] - s[:, output[4]]).min()))

  for b in SPARSE_BLOCKS:
    model.blocks[b].attn.register_forward_hook(record_margin)
  with torch.no_grad():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    logits, idxs = model(x, get_idx=True)
  print("smallest score margin at the cut per sparsifying block:", margins)
  return logits.numpy(), [i.numpy() for i in idxs]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--official", required=True, help="checkout of liuting20/Sparse-Tuning")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "sparse_tuning_official_reference.npz"))
  args = ap.parse_args()
  sd, images = official_state_dict(), reference_images()
  data = {"fingerprint": fingerprint(sd)}  # the images are regenerated from the seed too
  for fuse in (True, False):
    logits, idxs = run_official(args.official, fuse, sd, images)
    tag = "fuse" if fuse else "nofuse"
    data[f"logits_{tag}"] = logits
    for b, idx in zip(SPARSE_BLOCKS, idxs):
      data[f"kept_idx_{tag}_{b}"] = idx.astype(np.int32)
    print(tag, logits.shape, [i.shape for i in idxs])
  np.savez_compressed(args.out, **data)
  print("wrote", args.out, os.path.getsize(args.out), "bytes")


if __name__ == "__main__":
  main()
