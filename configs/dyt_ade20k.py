r"""DyT (Dynamic Tuning) for semantic segmentation: UperNet on ADE20K (`task=ade20k`, default), COCO-Stuff-164k
(`task=coco_stuff`) or the embedded digit scenes (`task=demo` or `demo`).

Recipe (the official dense_tasks/Segmentation, BEiT / mmseg 0.11; ../shared/reference/segmentation.md): ViT-B/16
ImageNet-21k at 512 px (position embedding resampled to 32 x 32 on load), frozen, with DyT's per-block routers
(MLP dispatch, Gumbel-sigmoid tau 5) and bottleneck-64 adapters at scale 0.1 (the official seg_train.py's
ffn_num and ffn_adapter_scalar); the patch tokens of blocks 4, 6, 8, 12 feed the
BEiT pyramid (strides 4, 8, 16, 32), the UperNet head (768 channels) and the auxiliary FCN head (256 channels,
loss weight 0.4), BatchNorm in both heads. Loss: pixel cross-entropy ignoring 255 + 0.4 x auxiliary + 2.0 x
(mean activation - 0.5)^2; no complete-model pass, no distillation. AdamW lr 1e-3, weight decay 0.05, betas
(0.9, 0.999), batch 16, 160,000 iterations with 1,500 linear warm-up iterations (then cosine to 0: the official
poly decay of power 1 is not one of vit_adapt's schedules), drop-path 0.1. Data: mmseg's pipeline (rescale of
(2048, 512) by [0.5, 2.0], 512 crop with at most 75 % of one category, flip, photometric distortion, pad 255);
evaluation at short side 512 with 512 px sliding windows at stride 341, mIoU over the classes.
Not reproduced: the official configs also give every block a BEiT relative position bias (use_rel_pos_bias=True,
zero-initialised and trained); vit_adapt's ViT has none (`convert --source=official-dyt` refuses trained tables).

  python -m vit_adapt.main --config=configs/dyt_ade20k.py:task=ade20k \
      --config.dataset.root=$HOME/data --workdir=runs/dyt_ade20k

reads <root>/ADEChallengeData2016/{images,annotations}/{training,validation} and prints one JSON line
{"task": "ade20k", "method": "dyt", "mIoU": ..., "trainable_params": ..., "gmacs_per_image": ...,
"wall_time_s": ..., "activation_rate": ..., "gmacs": ...}; WORKDIR/results.json also holds mAcc and aAcc.

Demo (embedded digit scenes: 48 x 48 canvases, background + 4 colour-coded object classes; random-init frozen
Ti/4 backbone with 4 blocks at 32 px, adapters of bottleneck 32 at scale 1.0, 6 epochs = 372 steps of batch 16;
UperNet with 32 channels; evaluation slides 2 x 2 windows of 32 px at stride 16 over each canvas; CPU). Chance:
all-background scores mIoU 0.16. Measured once on this project's shared 2-core CPU while other jobs loaded it
(load average 5-8, so the time is an upper bound): mIoU 0.918 (mAcc 0.948, aAcc 0.983), activation rate 0.61,
0.86 GMACs per canvas (0.39 backbone + 0.48 head), wall time 483 s:

  python -m vit_adapt.main --config=configs/dyt_ade20k.py:demo --workdir=/tmp/dyt_seg_demo

prints {"task": "demo/digit_scenes", "method": "dyt", "mIoU": ..., "trainable_params": ...,
"gmacs_per_image": ..., "wall_time_s": ..., "activation_rate": ..., "gmacs": ...}.
"""

from vit_adapt import config_lib
from vit_adapt.tasks import segmentation_recipe


def get_config(arg=None):
  args = config_lib.parse_arg(arg, {"task": "ade20k", "demo": False, "seed": 0})
  task = "demo" if args["demo"] else args["task"]
  config, _ = config_lib.make_config("dyt", f"task={segmentation_recipe.dataset_name(task)},seed={args['seed']}")
  segmentation_recipe.apply(config, task)
  # The official segmentation backbone adds only the rate loss to the segmentation losses.
  config.method.update(complete_pass=False, rate_weight=2.0, target_rate=0.5, bottleneck=64, scale=0.1)
  if task == "demo":
    config.method.update(bottleneck=32, scale=1.0)  # random-init backbone: a wider, unscaled adapter learns faster
  return config
