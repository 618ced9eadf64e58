"""The semantic-segmentation recipe shared by configs/*_ade20k.py: DyT's (BEiT/mmseg) ADE20K / COCO-Stuff
setting, or the embedded demo.

`apply(config, task)` sets the model (ViT at 512 px with the UperNet head on blocks 4/6/8/12), the data
(folder layouts, mmseg's pipeline and evaluation canvas) and the schedule (batch 16, 160k iterations, 1,500
warm-up iterations, AdamW lr 1e-3, weight decay 0.05); the method's own fields stay with the config file.
"""

from __future__ import annotations

from vit_adapt.errors import UserError

TASKS = {"ade20k": "ade20k", "coco_stuff": "coco_stuff", "demo": "demo/digit_scenes"}
_TRAIN_IMAGES = {"ade20k": 20_210, "coco_stuff": 118_287}  # for the 1,500 warm-up iterations in epochs


def dataset_name(task: str) -> str:
  if task not in TASKS:
    raise UserError(f"task={task!r}: the segmentation configs take task=ade20k, coco_stuff or demo.")
  return TASKS[task]


def apply(config, task: str) -> None:
  config.model.update(head="upernet", feature_blocks=(3, 5, 7, 11), head_channels=768, aux_channels=256,
                      head_dropout=0.1, slide_stride=341, window_batch=8)
  if task == "demo":
    apply_demo(config)
    return
  config.model.update(variant="B/16", image_size=512, drop_path=0.1, init="weights/ViT-B_16.npz")
  # mmseg's (2048, 512) scale; the evaluation canvas holds the common 683 x 512 landscape image exactly (portrait
  # and wider images are shrunk to fit it).
  config.segmentation.update(scale=(2048, 512), eval_size=(512, 683))
  config.train.update(batch_size=16, steps=160_000, checkpoint_every_steps=4000,
                      log_every_steps=50, keep_checkpoints=2)
  config.optim.update(lr=1e-3, wd=0.05, b1=0.9, b2=0.999, min_lr=0.0)
  with config.train.ignore_type():  # 1,500 warm-up iterations, in epochs of the training set
    config.train.warmup_epochs = 1500 / (_TRAIN_IMAGES[task] // 16)
  config.eval.batch_size = 8
  config.efficiency.batch_size = 8


def apply_demo(config) -> None:
  """Digit scenes (48 px canvases, background + 4 colour-coded object classes) with a random-init Ti/4 backbone
  of 4 blocks at 32 px; evaluation slides 2 x 2 windows of 32 px at stride 16 over each canvas.

  The head is what costs on CPU (its stride-4 level is 32 x 32 px here): 32 UperNet channels keep a step cheap.
  A random frozen backbone passes on what a 4 x 4 patch's pixels show (the classes' colours, the masks' edges),
  which the demo set is built around (data/segmentation_demo.py); the rescale jitter is narrowed to [0.75, 1.5]
  and the photometric distortion is off (it would shift the colours that name the classes); the head (randomly
  initialised like the adapters) trains at lr 3e-3, 3x the recipe's."""
  config.model.update(variant="Ti/4", image_size=32, depth=4, init="", feature_blocks=(0, 1, 2, 3),
                      head_channels=32, aux_channels=32, slide_stride=16, window_batch=16)
  config.segmentation.update(scale=(48, 48), eval_size=(48, 48), ratio_range=(0.75, 1.5), photometric=False)
  config.train.update(batch_size=16, epochs=6, warmup_epochs=1, log_every_steps=50, eval_every_epochs=0,
                      checkpoint_every_steps=0)
  config.optim.update(lr=3e-3, wd=0.05, min_lr=0.0)
  config.eval.batch_size = 20
  config.efficiency.batch_size = 16
