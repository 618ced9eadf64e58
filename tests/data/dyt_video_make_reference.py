"""Makes tests/data/dyt_video_official_small.safetensors + dyt_video_official_reference.npz by RUNNING the official
DyT video model (`video_models/video_vision_transformer_IN21K.py` of NUS-HPC-AI-Lab/Dynamic-Tuning).

A seeded random model in the official names (per-frame timm ViT with `adaptmlp` adapters and `mlp_token_select`
routers, the `query_token` + `attentive_blocks` pooling head, `head`), small (width 48, 3 heads, depth 3, patch 8,
32 px, 3 frames, 10 classes, adapter bottleneck 8, scale 0.1) so that it can be committed; the reference holds the
seeded clips (B, T, H, W, 3), the official evaluation logits, the complete-model logits and the router outputs.

  python tests/data/dyt_video_make_reference.py --official=/tmp/ref_dyt   (the checkout of dyt_make_reference.py)

Nothing of the official code is copied: it is imported from --official (the shims of dyt_make_reference.py).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dyt_make_reference import _shims  # noqa: E402

WIDTH, DEPTH, HEADS, PATCH, IMAGE_SIZE, FRAMES, NUM_CLASSES, BOTTLENECK, BATCH = 48, 3, 3, 8, 32, 3, 10, 8, 2
SCALE = 0.1  # the video recipe's adapter scale
SEED = 0
HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--official", required=True, help="checkout of NUS-HPC-AI-Lab/Dynamic-Tuning")
  a = p.parse_args()
  _shims()
  import torch
  from safetensors.numpy import save_file
  sys.path.insert(0, a.official)
  sys.path.insert(0, os.path.join(a.official, "video_models"))
  from video_vision_transformer_IN21K import VisionTransformer  # the official video model class

  easydict = sys.modules["easydict"].EasyDict
  tuning = easydict(ffn_adapt=True, ffn_option="parallel", ffn_adapter_layernorm_option="none",
                    ffn_adapter_init_option="lora", ffn_adapter_scalar=str(SCALE), ffn_num=BOTTLENECK,
                    d_model=WIDTH)
  select = easydict(open=True, keep_layers=0)
  torch.manual_seed(SEED)
  model = VisionTransformer(img_size=IMAGE_SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                            num_classes=NUM_CLASSES, qkv_bias=True, tuning_config=tuning, select_config=select)
  gen = torch.Generator().manual_seed(SEED)
  with torch.no_grad():  # every tensor random (a fresh init has zero adapters, biases and query)
    for name, t in model.named_parameters():
      is_norm_weight = "norm" in name and name.endswith("weight")
      noise = torch.randn(t.shape, generator=gen) * (0.3 if is_norm_weight else 0.1)
      t.copy_(1.0 + noise if is_norm_weight else noise)
      if "mlp_token_select" in name:
        t.mul_(20.0)  # router logits of order 1: a mix of active and skipped tokens
  model.eval()
  x = torch.randn(BATCH, 3, FRAMES, IMAGE_SIZE, IMAGE_SIZE, generator=gen)  # (B, C, T, H, W), as main_video.py
  with torch.no_grad():
    logits, aux = model(x)
    complete, _ = model(x, complete_model=True)
  token_logits = aux["token_logits"][..., 0].numpy()  # (B*T, depth, N-1)
  masks = aux["token_select"][..., 0].numpy()
  print("smallest |router logit|:", float(np.abs(token_logits).min()), "activation:", float(masks.mean()))
  sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  save_file(sd, os.path.join(HERE, "dyt_video_official_small.safetensors"))
  np.savez(os.path.join(HERE, "dyt_video_official_reference.npz"), clips=x.numpy().transpose(0, 2, 3, 4, 1),
           logits=logits.numpy(), complete_logits=complete.numpy(), token_logits=token_logits, masks=masks)
  print(sorted(k for k in sd if not k.startswith("blocks.")))


if __name__ == "__main__":
  main()
