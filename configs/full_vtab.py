r"""Full fine-tuning of every ViT weight on a VTAB-1k task (the reference point of the PEFT tables).

Recipe: ViT-B/16 ImageNet-21k at 224 px, all 85.8M parameters train; AdamW lr 1e-4 (ten times below the PEFT
recipe: with every weight free, 1e-3 wipes out the pre-trained features in a few hundred steps), weight decay
1e-4, batch 64, 100 epochs, 10 epochs of per-step linear warmup then cosine to 1e-6; train800val200 -> test,
no augmentation, pixels in [-1, 1], the last partial batch counted (16 steps per epoch, 1600 steps).

Run (after preparing the data and getting the weights, see README.md; weights/ViT-B_16.npz is the default):

  python -m vit_adapt.main --config=configs/full_vtab.py:task=vtab/dtd \
      --config.dataset.data_dir=$HOME/tensorflow_datasets --workdir=runs/full/dtd

It logs the parameter table (85,834,799 trainable),
a progress line with steps/s and ETA and the train metrics, and prints one JSON line at the end:
  {"task": "vtab/dtd", "method": "full", "top1": ..., "trainable_params": 85834799, "gmacs_per_image": 17.563, ...}
The full record is WORKDIR/results.json.

Demo (embedded digits, random-init backbone trained from scratch; CPU):

  python -m vit_adapt.main --config=configs/full_vtab.py:demo --workdir=runs/demo_full

prints {"task": "demo/digits", "method": "full", "top1": 0.944..., ...} (README.md: measured numbers).
"""

from vit_adapt import config_lib


def get_config(arg=None):
  config, args = config_lib.make_config("full", arg)
  if not args["demo"]:
    # The Google ViT-B/16 ImageNet-21k weights all four papers start from (README: "Get the weights").
    config.model.init = "weights/ViT-B_16.npz"
    config.train.keep_last_partial = True
    config.optim.update(lr=1e-4, min_lr=1e-6)
  return config
