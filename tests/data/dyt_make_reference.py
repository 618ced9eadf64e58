"""Makes tests/data/dyt_official_small.safetensors + dyt_official_reference.npz by RUNNING the official DyT code.

The checkpoint is a seeded random model in the official parameter names (a timm ViT with `adaptmlp` adapters and
`mlp_token_select` routers), small (width 48, 3 heads, depth 3, patch 8, 32 px, 10 classes, adapter bottleneck 8)
so that it can be committed; the reference holds seeded inputs, the official model's evaluation logits and its
router outputs. Adapters and routers are non-zero and the routers' logits are kept away from the 0 threshold
(the script prints the smallest |logit|) so the masks are well defined in float32.

Run (needs torch, timm >= 0.9 and a checkout of NUS-HPC-AI-Lab/Dynamic-Tuning at d1744f0, e.g. unpacked with
`git archive HEAD | tar -x -C /tmp/ref_dyt`):

  python tests/data/dyt_make_reference.py --official=/tmp/ref_dyt

Nothing of the official code is copied here: it is imported from --official. Shims: `torch._six` and
`numpy.lib.arraysetops` (removed in torch >= 2 / numpy >= 2) and `easydict` are provided as tiny stand-ins, and
torchvision (imported by timm) is loaded without its compiled-operator registration when that fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import types

import numpy as np

WIDTH, DEPTH, HEADS, PATCH, IMAGE_SIZE, NUM_CLASSES, BOTTLENECK, BATCH = 48, 3, 3, 8, 32, 10, 8, 4
SCALE = 0.1  # the complete-dataset adapter scale: exercises a scale that is not 1
SEED = 0
HERE = os.path.dirname(os.path.abspath(__file__))


def _shims():
  import torch
  sys.modules.setdefault("torch._six", types.SimpleNamespace(inf=float("inf"), string_classes=(str,)))
  if "numpy.lib.arraysetops" not in sys.modules:
    sys.modules["numpy.lib.arraysetops"] = types.SimpleNamespace(isin=np.isin)
  if "easydict" not in sys.modules:
    class EasyDict(dict):
      __getattr__ = dict.__getitem__
    sys.modules["easydict"] = types.SimpleNamespace(EasyDict=EasyDict)
  try:
    import torchvision  # noqa: F401
  except RuntimeError:
    for name in [n for n in sys.modules if n.startswith("torchvision")]:
      del sys.modules[name]
    real = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda fn: fn)
    import torchvision  # noqa: F401
    torch.library.register_fake = real


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--official", required=True, help="checkout of NUS-HPC-AI-Lab/Dynamic-Tuning")
  a = p.parse_args()
  _shims()
  import torch
  from safetensors.numpy import save_file
  sys.path.insert(0, a.official)
  from models.vision_transformer_IN21K import VisionTransformer  # the official model class

  easydict = sys.modules["easydict"].EasyDict
  tuning = easydict(ffn_adapt=True, ffn_option="parallel", ffn_adapter_layernorm_option="none",
                    ffn_adapter_init_option="lora", ffn_adapter_scalar=str(SCALE), ffn_num=BOTTLENECK,
                    d_model=WIDTH)
  select = easydict(open=True, keep_layers=0)
  torch.manual_seed(SEED)
  model = VisionTransformer(img_size=IMAGE_SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                            num_classes=NUM_CLASSES, tuning_config=tuning, select_config=select)
  gen = torch.Generator().manual_seed(SEED)
  with torch.no_grad():  # every tensor random (a fresh init has zero adapters and biases)
    for name, t in model.named_parameters():
      scale = 0.3 if "norm" in name and name.endswith("weight") else 0.1
      noise = torch.randn(t.shape, generator=gen) * scale
      t.copy_(1.0 + noise if ("norm" in name and name.endswith("weight")) else noise)
      if "mlp_token_select" in name:
        t.mul_(20.0)  # router logits of order 1: a mix of active and skipped tokens
  model.eval()
  x = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
  with torch.no_grad():
    logits, aux = model(x)
    complete, _ = model(x, complete_model=True)
  token_logits = aux["token_logits"][..., 0].numpy()  # (B, depth, N-1)
  masks = aux["token_select"][..., 0].numpy()
  print("smallest |router logit|:", float(np.abs(token_logits).min()), "activation:", float(masks.mean()))
  sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  save_file(sd, os.path.join(HERE, "dyt_official_small.safetensors"))
  np.savez(os.path.join(HERE, "dyt_official_reference.npz"), images_nhwc=x.numpy().transpose(0, 2, 3, 1),
           logits=logits.numpy(), complete_logits=complete.numpy(), token_logits=token_logits, masks=masks)
  print({k: v.shape for k, v in sd.items() if k.startswith("blocks.0.")})


if __name__ == "__main__":
  main()
