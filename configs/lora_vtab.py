r"""LoRA on the query and value projections of every block, on a VTAB-1k task.

Recipe: ViT-B/16 ImageNet-21k at 224 px, frozen; LoRA rank 8, alpha 8 on query and value (B = 0 at start), head
trains too. AdamW lr 1e-3, weight decay 1e-4, batch 64, 100 epochs, 10 epochs of per-step linear warmup then
cosine to 1e-5; train800val200 -> test, no augmentation, pixels in [-1, 1], last partial batch kept.

Run (after preparing the data and getting the weights, see README.md):

  python -m vit_adapt.main --config=configs/lora_vtab.py:task=vtab/dtd \
      --config.model.init=weights/ViT-B_16.npz --workdir=runs/lora/dtd

It ends with one JSON line {"task": "vtab/dtd", "method": "lora", "top1": ..., "trainable_params": 330527, ...}
(12 blocks x 2 targets x 8 x 2 x 768 = 294,912 LoRA weights + the 47-class head).

Demo (embedded digits, random-init backbone, CPU, about a minute):

  python -m vit_adapt.main --config=configs/lora_vtab.py:demo --workdir=runs/demo_lora
"""

from vit_adapt import config_lib


def get_config(arg=None):
  config, args = config_lib.make_config("lora", arg)
  if not args["demo"]:
    config.train.keep_last_partial = True
  return config
