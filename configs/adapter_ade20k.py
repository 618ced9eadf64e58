r"""Dense baselines for semantic segmentation on the same UperNet head: AdaptFormer adapters (default) or full
fine-tuning (`full`), on ADE20K (`task=ade20k`), COCO-Stuff-164k (`task=coco_stuff`) or the embedded digit scenes
(`task=demo` or `demo`).

Recipe: configs/dyt_ade20k.py's (ViT-B/16 ImageNet-21k at 512 px, blocks 4/6/8/12 -> BEiT pyramid -> UperNet +
auxiliary FCN (weight 0.4), batch 16, 160,000 iterations, 1,500 warm-up, AdamW lr 1e-3, weight decay 0.05, mmseg's
pipeline, sliding-window evaluation), with a bottleneck-64 adapter per block (scale 0.1) instead of DyT's routers
and adapters, so every token runs every MLP; `full` trains every backbone weight too, at lr 1e-4.

  python -m vit_adapt.main --config=configs/adapter_ade20k.py:task=ade20k \
      --config.dataset.root=$HOME/data --workdir=runs/adapter_ade20k

prints {"task": "ade20k", "method": "adapter", "mIoU": ..., "trainable_params": ..., "gmacs_per_image": ...,
"wall_time_s": ...}; WORKDIR/results.json also holds mAcc and aAcc.

Demo (embedded digit scenes: 48 x 48 canvases, background + 4 colour-coded object classes; random-init frozen
Ti/4 backbone with 4 blocks at 32 px, 6 epochs = 372 steps of batch 16; adapter scale 1.0; CPU). Chance:
all-background scores mIoU 0.16. Measured once on this project's shared 2-core CPU while other jobs loaded it
(load average 3-6, so the time is an upper bound): mIoU 0.919 (mAcc 0.950, aAcc 0.983), 0.99 GMACs per canvas
(0.52 backbone + 0.48 head), wall time 359 s:

  python -m vit_adapt.main --config=configs/adapter_ade20k.py:demo --workdir=/tmp/adapter_seg_demo

prints {"task": "demo/digit_scenes", "method": "adapter", "mIoU": ..., "trainable_params": ...,
"gmacs_per_image": ..., "wall_time_s": ...}.
"""

from vit_adapt import config_lib
from vit_adapt.tasks import segmentation_recipe


def get_config(arg=None):
  args = config_lib.parse_arg(arg, {"task": "ade20k", "demo": False, "seed": 0, "full": False})
  task = "demo" if args["demo"] else args["task"]
  method = "full" if args["full"] else "adapter"
  config, _ = config_lib.make_config(method, f"task={segmentation_recipe.dataset_name(task)},seed={args['seed']}")
  segmentation_recipe.apply(config, task)
  if args["full"]:
    config.optim.lr = 1e-4
  elif task == "demo":
    config.method.scale = 1.0  # random-init backbone: the recipe's 0.1 learns too slowly in the demo's steps
  return config
