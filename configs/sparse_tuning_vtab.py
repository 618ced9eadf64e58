r"""Sparse-Tuning on a VTAB-1k task, or on a complete dataset with `complete`.

Model (the paper / official code): ViT-B/16 ImageNet-21k (original) backbone at 224 px, frozen; token
sparsification in blocks 3, 6, 9 (zero-based) keeping ceil(0.7 (N - 1)) tokens by class-token attention, the rest
fused into one token (197 -> 140 -> 100 -> 72 tokens); a Dense Adapter per block parallel to the MLP (the paper's
design by default; `released` switches to the official code's multi-branch adapter with its group sums and
initialisation); head = non-affine BatchNorm + linear (truncated normal std 0.01).

VTAB-1k recipe: the official release has none, so this is the DyT VTAB-1k recipe (the common PEFT protocol):
AdamW lr 1e-3, weight decay 1e-4, batch 64 keeping the last partial batch (16 steps/epoch), 100 epochs, 10 epochs
of per-step linear warmup then cosine to 1e-5; train800val200 -> test, no augmentation, pixels in [-1, 1].
Reported: the final-epoch test accuracy.

  python -m vit_adapt.main --config=configs/sparse_tuning_vtab.py:task=vtab/dtd \
      --config.model.init=weights/ViT-B_16.npz --workdir=runs/sparse_tuning/dtd

It logs the parameter table (the 12 Dense Adapters, the head), progress lines, and ends with one JSON line
{"task": "vtab/dtd", "method": "sparse_tuning", "top1": ..., "trainable_params": ..., "gmacs_per_image": ...,
"throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ...}. `python
experiments/bench_sparse_tuning.py` counts 11.88 GMACs per image in paper mode, 11.79 released, 17.58 for the
dense ViT-B/16 (docs/sparse_tuning.md, 100 classes). Full numbers in WORKDIR/results.json.

Complete datasets (`complete`, e.g. `task=cifar100,complete`): the official training script's recipe - AdamW
weight decay 0, batch 512, peak lr 5e-4, 20 warmup epochs then cosine to 0 at epoch 100, RandomResizedCrop(224,
bicubic) + flip for training, resize 256 / centre crop 224 for evaluation, Mixup 0.8 / CutMix 1.0 with label
smoothing 0.1. (The official loop starts at lr 0.2 x epoch/20 and overrides the peak to 5e-4 from epoch 4 on; we
run the 5e-4 schedule from the start, and in float32 instead of fp16 autocast.)
Batch: the official `--batch_size 512` is per GPU (main_image.py: effective batch = 512 x GPUs x accum_iter; the
release does not say how many GPUs). Here `train.batch_size` is the global batch = per-device batch x devices:
the recipe sets 512, the official per-GPU batch on one device; on N devices pass
`--config.train.batch_size=$((512 * N))` to keep 512 per device. Like the official training loader
(`drop_last=True`), an epoch counts only full batches (`train.keep_last_partial=False`).
Memory: the recipe accumulates gradients over 8 micro-batches of 64 (`train.accum_steps=8`, the update of the
batch of 512; the BatchNorm head normalises each micro-batch by its own statistics, as each GPU of a multi-GPU
official run does) so that the batch of 512 fits one 16 GB device. `python experiments/train_memory.py
--recipes=sparse_tuning` (XLA CPU memory analysis of the compiled training step, one device, float32):

  | recipe | global batch | accum_steps | micro-batch | remat | peak GiB | fits 16 GB |
  |---|---|---|---|---|---|---|
  | sparse_tuning | 512 | 1 | 512 | off | 78.50 | no |
  | sparse_tuning | 512 | 4 | 128 | off | 20.47 | no |
  | sparse_tuning | 512 | 4 | 128 | dots | 17.31 | no |
  | sparse_tuning | 512 | 8 | 64 | off | 10.75 | yes |

On N devices the micro-batch is per step and global: with `batch_size=512 * N` keep `accum_steps=8` (64 per
device per micro-batch), or lower it on larger devices (`--config.train.accum_steps=2` on 80 GB).

Importing a checkpoint trained with the official code (it used the released adapter; pass
`--config.method.fuse_token=False` if it was trained without `--fuse_token`, the official script's default):

  python -m vit_adapt.convert --source=official-sparse-tuning --checkpoint=checkpoint-99.pth \
      --config=configs/sparse_tuning_vtab.py:task=cifar100,complete,released --out=runs/st_imported

Demo (embedded digits, random-init frozen Ti/4 backbone with 4 blocks at 16 px, 20 epochs = 440 steps of batch
64, see vit_adapt/config_lib.py: apply_demo; sparsification in the zero-based blocks 1, 2, 3, see get_config; CPU):

  python -m vit_adapt.main --config=configs/sparse_tuning_vtab.py:demo --workdir=/tmp/sparse_tuning_demo

prints {"task": "demo/digits", "method": "sparse_tuning", "top1": ..., "trainable_params": ..., "gmacs_per_image":
..., "throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ...}; `python
experiments/demo_table.py --methods=sparse_tuning` measured top-1 91.1%, 150,410 trainable parameters, 0.0269
GMACs per image.
"""

from vit_adapt import config_lib
from vit_adapt.errors import UserError


def get_config(arg=None):
  config, args = config_lib.make_config("sparse_tuning", arg, complete=False, released=False)
  config.model.head_init_std = 0.01  # the official head: trunc_normal_(std=0.01)
  if args["released"]:
    config.method.dense_adapter = "released"
  if args["complete"]:
    if config.dataset.name.startswith("vtab/"):
      raise UserError(f"configs/sparse_tuning_vtab.py: `complete` is the complete-dataset recipe but the task is "
                      f"{config.dataset.name!r} (a VTAB-1k task). Pass a complete dataset, e.g. "
                      "--config=configs/sparse_tuning_vtab.py:task=cifar100,complete.")
    config.dataset.update(split="train", eval_split="test", augment="inception_crop", mixup=0.8, cutmix=1.0,
                          label_smoothing=0.1)
    config.train.update(batch_size=512, epochs=100, warmup_epochs=20, accum_steps=8)  # fits 16 GB (docstring)
    config.optim.update(lr=5e-4, min_lr=0.0, wd=0.0)
  if args["demo"]:
    # The demo model has 4 blocks; the released group sums (blocks 0-2 after block 2) allow only block 3.
    config.method.sparse_blocks = (3,) if args["released"] else (1, 2, 3)
  else:
    # The Google ViT-B/16 ImageNet-21k weights all four papers start from (README: "Get the weights").
    config.model.init = "weights/ViT-B_16.npz"
    # VTAB-1k: the PEFT loaders keep the last partial batch (16 steps per epoch); the official complete-dataset
    # loader drops it (drop_last=True).
    config.train.keep_last_partial = not args["complete"]
  return config
