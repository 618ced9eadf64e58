r"""Linear probe on a VTAB-1k task: only the classification head trains, on the frozen class-token feature.

Recipe: ViT-B/16 ImageNet-21k at 224 px, frozen; the head (768 x C + C) trains with AdamW lr 1e-3, weight decay
1e-4, batch 64, 100 epochs, 10 epochs of per-step linear warmup then cosine to 1e-5; train800val200 -> test,
no augmentation, pixels in [-1, 1], the last partial batch counted (16 steps per epoch, 1600 steps).

Run (after preparing the data and getting the weights, see README.md; weights/ViT-B_16.npz is the default):

  python -m vit_adapt.main --config=configs/linear_vtab.py:task=vtab/dtd \
      --config.dataset.data_dir=$HOME/tensorflow_datasets --workdir=runs/linear/dtd

It logs the parameter table (36,143 trainable: the 47-class head),
a progress line with steps/s and ETA and the train metrics, and prints one JSON line at the end:
  {"task": "vtab/dtd", "method": "linear", "top1": ..., "trainable_params": 36143, "gmacs_per_image": 17.563, ...}
The full record is WORKDIR/results.json.

Demo (embedded digits, random frozen backbone, so this probes random features; CPU):

  python -m vit_adapt.main --config=configs/linear_vtab.py:demo --workdir=runs/demo_linear

prints {"task": "demo/digits", "method": "linear", "top1": 0.553..., ...} (README.md: measured numbers).
"""

from vit_adapt import config_lib


def get_config(arg=None):
  config, args = config_lib.make_config("linear", arg)
  if not args["demo"]:
    # The Google ViT-B/16 ImageNet-21k weights all four papers start from (README: "Get the weights").
    config.model.init = "weights/ViT-B_16.npz"
    config.train.keep_last_partial = True
  return config
