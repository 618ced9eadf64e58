r"""Linear probe on a VTAB-1k task: only the classification head trains, on the frozen class-token feature.

Recipe: ViT-B/16 ImageNet-21k at 224 px, frozen; head (768 x C + C) trains with AdamW lr 1e-3, weight decay
1e-4, batch 64, 100 epochs, 10 epochs of per-step linear warmup then cosine to 1e-5; train800val200 -> test,
no augmentation, pixels in [-1, 1], last partial batch kept (16 steps per epoch).

Run (after preparing the data and getting the weights, see README.md):

  python -m vit_adapt.main --config=configs/linear_vtab.py:task=vtab/dtd \
      --config.model.init=weights/ViT-B_16.npz --workdir=runs/linear/dtd

It ends with one JSON line {"task": "vtab/dtd", "method": "linear", "top1": ..., "trainable_params": 36143, ...}.

Demo (embedded digits, random frozen backbone: a probe of random features, CPU, under a minute):

  python -m vit_adapt.main --config=configs/linear_vtab.py:demo --workdir=runs/demo_linear
"""

from vit_adapt import config_lib


def get_config(arg=None):
  config, args = config_lib.make_config("linear", arg)
  if not args["demo"]:
    config.train.keep_last_partial = True
  return config
