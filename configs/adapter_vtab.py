r"""AdaptFormer (parallel bottleneck adapter) on a VTAB-1k task.

Recipe (AdaptFormer / NOAH VTAB-1k setting, also used by DyT and Sparse-Tuning for this baseline): ViT-B/16
ImageNet-21k backbone at 224 px, frozen; adapters after every block's attention, parallel to the MLP, bottleneck
64, scale 0.1, dropout 0.1; the head trains too. AdamW lr 1e-3, weight decay 1e-4, batch 64, 100 epochs with 10
epochs of per-step linear warmup then cosine to 1e-5; train800val200 -> test, no augmentation, pixels in [-1, 1].
The last partial batch of an epoch is kept (1000 images / 64 = 16 steps per epoch, as the papers' code).

Run (after `python -m vit_adapt.data.prepare` and getting the weights, see README.md):

  python -m vit_adapt.main --config=configs/adapter_vtab.py:task=vtab/dtd \
      --config.model.init=weights/ViT-B_16.npz --workdir=runs/adapter/dtd

It logs a parameter table (trainable: 1.26M for 47 classes: 12 x 99.6k adapter + 36k head), a progress line
with steps/s and ETA, and ends printing one JSON line: {"task": "vtab/dtd", "method": "adapter", "top1": ...,
"trainable_params": 1231919, "gmacs_per_image": 17.7...}. Full numbers are in WORKDIR/results.json.

Demo (embedded digits, random-init Ti backbone, CPU, about a minute):

  python -m vit_adapt.main --config=configs/adapter_vtab.py:demo --workdir=runs/demo_adapter

prints {"task": "demo/digits", "method": "adapter", "top1": 0.9..., ...}.
"""

from vit_adapt import config_lib


def get_config(arg=None):
  config, args = config_lib.make_config("adapter", arg)
  if not args["demo"]:
    config.train.keep_last_partial = True
  return config
