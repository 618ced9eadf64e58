r"""Visual Prompt Tuning (deep, 10 prompts per block) on a VTAB-1k task.

Recipe: ViT-B/16 ImageNet-21k at 224 px, frozen; VPT-deep with 10 learnable prompt tokens per block (prompt
dropout 0.1), head trains too. VPT tunes the prompt count per task (1 to 200); 10 is the common single setting
of the PEFT comparisons. AdamW lr 1e-3, weight decay 1e-4, batch 64, 100 epochs, 10 epochs of per-step linear
warmup then cosine to 1e-5; train800val200 -> test, no augmentation, pixels in [-1, 1], last partial batch kept.
Change the prompt count with --config.method.num_prompts=50, shallow VPT with --config.method.deep=False.

Run (after preparing the data and getting the weights, see README.md):

  python -m vit_adapt.main --config=configs/vpt_vtab.py:task=vtab/dtd \
      --config.model.init=weights/ViT-B_16.npz --workdir=runs/vpt/dtd

It ends with one JSON line {"task": "vtab/dtd", "method": "vpt", "top1": ..., "trainable_params": 128303, ...}
(12 x 10 x 768 = 92,160 prompt weights + the 47-class head).

Demo (embedded digits, random-init backbone, CPU, about a minute):

  python -m vit_adapt.main --config=configs/vpt_vtab.py:demo --workdir=runs/demo_vpt
"""

from vit_adapt import config_lib


def get_config(arg=None):
  config, args = config_lib.make_config("vpt", arg)
  if not args["demo"]:
    config.train.keep_last_partial = True
  return config
