"""Makes tests/data/dyt_seg_official_small.npz + dyt_seg_official_reference.npz by RUNNING the official DyT
segmentation backbone (dense_tasks/Segmentation/backbone/segmentation_vision_transformer_IN21K.py).

The checkpoint is a seeded random backbone in the official parameter names (timm ViT blocks with `adaptmlp`
adapters and `mlp_token_select` routers, plus the BEiT pyramid's transposed convolutions `fpn1.{0,2}`, `fpn2.0`),
small enough to commit: width 32, 2 heads, depth 4 (features of blocks 0..3), patch 8, 64 px (an 8 x 8 grid),
adapter bottleneck 8, adapter scale 0.1 (the official segmentation setting). The reference holds the seeded input
images (NHWC) and the backbone's four pyramid maps (NHWC; strides 2, 4, 8, 16 of this patch-8 model) and its
router logits and masks, in evaluation mode.

The official configs build the backbone with `use_rel_pos_bias=True`: every block gets a BEiT relative position
bias table, initialised to zeros and trained (it is not in the ImageNet-21k checkpoint, and the official script
trains every parameter the checkpoint lacks). vit_adapt's ViT has no relative position bias, so the tables are
left at their zero initialisation here (where the two models agree) and `official-dyt` refuses non-zero ones.

Run (needs torch, timm >= 0.9 and a checkout of NUS-HPC-AI-Lab/Dynamic-Tuning):

  python tests/data/dyt_seg_make_reference.py --official=/work/ref/dyt

Nothing of the official code is copied here: it is imported from --official. Its mmseg / mmcv imports (registry,
logger, checkpoint loader) are stubbed by tiny fake modules; the torch/numpy/easydict shims are those of
dyt_make_reference.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types

import numpy as np

WIDTH, DEPTH, HEADS, PATCH, IMAGE_SIZE, BOTTLENECK, BATCH = 32, 4, 2, 8, 64, 8, 2
OUT_INDICES = (0, 1, 2, 3)
SCALE = 0.1
SEED = 0
HERE = os.path.dirname(os.path.abspath(__file__))


def _stub_mm():
  """The official backbone imports mmcv_custom.load_checkpoint, mmseg.utils.get_root_logger and
  mmseg.models.builder.BACKBONES (registration only)."""
  registry = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
  for name, attrs in {"mmcv_custom": {"load_checkpoint": lambda *a, **k: None},
                      "mmseg": {}, "mmseg.utils": {"get_root_logger": lambda *a, **k: None},
                      "mmseg.models": {}, "mmseg.models.builder": {"BACKBONES": registry}}.items():
    sys.modules[name] = types.SimpleNamespace(**attrs)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--official", required=True, help="checkout of NUS-HPC-AI-Lab/Dynamic-Tuning")
  a = p.parse_args()
  spec = importlib.util.spec_from_file_location("dyt_make_reference", os.path.join(HERE, "dyt_make_reference.py"))
  shared = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(shared)
  shared._shims()
  _stub_mm()
  import torch
  sys.path.insert(0, a.official)  # `models.dynamic_adapter`
  sys.path.insert(0, os.path.join(a.official, "dense_tasks", "Segmentation"))
  from backbone.segmentation_vision_transformer_IN21K import VisionTransformer21K  # the official backbone

  easydict = sys.modules["easydict"].EasyDict
  tuning = easydict(ffn_adapt=True, ffn_option="parallel", ffn_adapter_layernorm_option="none",
                    ffn_adapter_init_option="lora", ffn_adapter_scalar=str(SCALE), ffn_num=BOTTLENECK,
                    d_model=WIDTH)
  select = easydict(open=True, keep_layers=0, layer_target_ratio=0.5, layer_loss_ratio=2.0, layer_diverse_ratio=0.0,
                    layer_entropy_weight=0.0, layer_minimal_weight=0.0, layer_minimal=0.0, token_ratio=2.0,
                    token_target_ratio=0.5, token_minimal=0.0, token_minimal_weight=0.0)
  torch.manual_seed(SEED)
  model = VisionTransformer21K(img_size=IMAGE_SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH,
                               num_heads=HEADS, mlp_ratio=4.0, qkv_bias=True, out_indices=list(OUT_INDICES),
                               use_rel_pos_bias=True, tuning_config=tuning, select_config=select)
  gen = torch.Generator().manual_seed(SEED)
  with torch.no_grad():  # every tensor random (a fresh init has zero adapters and biases) but the rel-pos tables
    for name, t in model.named_parameters():
      if "relative_position_bias_table" in name:
        continue
      is_norm_scale = "norm" in name and name.endswith("weight")
      noise = torch.randn(t.shape, generator=gen) * (0.3 if is_norm_scale else 0.1)
      t.copy_(1.0 + noise if is_norm_scale else noise)
      if "mlp_token_select" in name:
        t.mul_(20.0)  # router logits of order 1: a mix of active and skipped tokens
  model.eval()
  x = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
  with torch.no_grad():
    features, aux = model(x)
  token_logits = aux["token_logits"][..., 0].numpy()  # (B, depth, N-1)
  masks = aux["token_select"][..., 0].numpy()
  print("smallest |router logit|:", float(np.abs(token_logits).min()), "activation:", float(masks.mean()))
  sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()
        if not k.endswith("relative_position_index")}  # a buffer of indices, not a weight
  np.savez(os.path.join(HERE, "dyt_seg_official_small.npz"), **sd)
  ref = {f"level_{i}": f.numpy().transpose(0, 2, 3, 1) for i, f in enumerate(features)}
  np.savez(os.path.join(HERE, "dyt_seg_official_reference.npz"), images_nhwc=x.numpy().transpose(0, 2, 3, 1),
           token_logits=token_logits, masks=masks, **ref)
  print({k: v.shape for k, v in ref.items()})
  print(sorted(k for k in sd if not k.startswith("blocks.")))


if __name__ == "__main__":
  main()
