"""Regenerates `synqt_reference.npz` by RUNNING the official SynQT code (taolinzhang/SynQT @ 15f3292).

Not part of the test suite (needs the official repository, timm 0.4.12 and torch). Steps:

  git clone https://github.com/taolinzhang/SynQT /tmp/ref_synqt        # or the fetch tool + git archive
  pip install --target /tmp/timm0412 timm==0.4.12 --no-deps
  # stubs: timm 0.4.12 imports torchvision at import time (only for data transforms)
  PYTHONPATH=/tmp/timm0412:/tmp/synqt_stubs:/tmp/ref_synqt python tests/data/synqt_make_reference.py

where /tmp/synqt_stubs/torchvision is an empty package whose `transforms` (and `transforms.functional`)
module resolves any attribute to a dummy. `.cuda()` is made a no-op (the official combine block calls it).
The official model runs in float64 on the weights of `synqt_official_weights.py`; the saved logits are the
reference the converted JAX model must match (float32, relative error 1e-4).
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synqt_official_weights as W  # noqa: E402

torch.Tensor.cuda = lambda self, *a, **k: self  # the official code hard-codes CUDA in one place

import timm  # noqa: E402  (0.4.12 from PYTHONPATH)
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
import synqt as official  # noqa: E402  (the official module, from PYTHONPATH)


def main():
  assert timm.__version__ == "0.4.12", timm.__version__
  args = argparse.Namespace(token_nums=W.QUERIES, feat_scale=0.1, attn_scale=0.1, ffn_scale=0.1)
  model = VisionTransformer(img_size=W.IMAGE, patch_size=W.PATCH, embed_dim=W.WIDTH, depth=W.DEPTH,
                            num_heads=W.HEADS, mlp_ratio=W.MLP / W.WIDTH, num_classes=W.CLASSES)
  official.set_synqt(args, model)
  sd = W.official_state_dict()
  missing = set(model.state_dict()) ^ set(sd)
  assert not missing, sorted(missing)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  model = model.double().eval()
  x = W.test_inputs()
  with torch.no_grad():
    logits = model(torch.from_numpy(x).double()).numpy()
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synqt_reference.npz")
  np.savez(out, images_nchw=x, logits=logits, seed=np.int64(W.SEED))
  print("logits", logits)
  print("wrote", out)


if __name__ == "__main__":
  main()
