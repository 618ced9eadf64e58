r"""LoRA on the query and value projections of every block, on a VTAB-1k task.

Recipe: ViT-B/16 ImageNet-21k at 224 px, frozen; LoRA rank 8, alpha 8 on query and value (B = 0 at start), the
head trains too. AdamW lr 1e-3, weight decay 1e-4, batch 64, 100 epochs, 10 epochs of per-step linear warmup
then cosine to 1e-5; train800val200 -> test, no augmentation, pixels in [-1, 1], the last partial batch counted
(16 steps per epoch, 1600 steps). Other targets: --config.method.targets=qkvo.

Run (after preparing the data and getting the weights, see README.md; weights/ViT-B_16.npz is the default):

  python -m vit_adapt.main --config=configs/lora_vtab.py:task=vtab/dtd \
      --config.dataset.data_dir=$HOME/tensorflow_datasets --workdir=runs/lora/dtd

It logs the parameter table, a progress line with steps/s and ETA and the train metrics, and prints one JSON
line at the end (the full record is WORKDIR/results.json):
  {"task": "vtab/dtd", "method": "lora", "top1": ..., "trainable_params": 331055, "gmacs_per_image": ...,
   "throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ...}
331,055 trainable = 12 x 2 x 12,288 LoRA + the 47-class head (`python experiments/param_counts.py
--num_classes=47`).

Demo (embedded digits, random frozen Ti/4 backbone with 4 blocks at 16 px, 20 epochs = 440 steps of batch 64,
see vit_adapt/config_lib.py: apply_demo; CPU):

  python -m vit_adapt.main --config=configs/lora_vtab.py:demo --workdir=runs/demo_lora

prints {"task": "demo/digits", "method": "lora", "top1": ..., "trainable_params": ..., "gmacs_per_image": ...,
"throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ...}; `python
experiments/demo_table.py` measured top-1 82.8%, 26,506 trainable parameters, 0.0311 GMACs per image (README.md,
the demo table).
"""

from vit_adapt import config_lib


def get_config(arg=None):
  config, args = config_lib.make_config("lora", arg)
  if not args["demo"]:
    # The Google ViT-B/16 ImageNet-21k weights all four papers start from (README: "Get the weights").
    config.model.init = "weights/ViT-B_16.npz"
    config.train.keep_last_partial = True
  return config
