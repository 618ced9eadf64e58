r"""Full fine-tuning of every ViT weight on a VTAB-1k task (the reference point of the PEFT tables).

Recipe: ViT-B/16 ImageNet-21k at 224 px, all 85.8M parameters train; AdamW lr 1e-4 (ten times below the PEFT
recipe: with every weight free, 1e-3 wipes out the pre-trained features in a few hundred steps), weight decay
1e-4, batch 64, 100 epochs, 10 epochs of per-step linear warmup then cosine to 1e-6; train800val200 -> test,
no augmentation, pixels in [-1, 1], the last partial batch counted (16 steps per epoch, 1600 steps).

Run (after preparing the data and getting the weights, see README.md; weights/ViT-B_16.npz is the default):

  python -m vit_adapt.main --config=configs/full_vtab.py:task=vtab/dtd \
      --config.dataset.data_dir=$HOME/tensorflow_datasets --workdir=runs/full/dtd

It logs the parameter table, a progress line with steps/s and ETA and the train metrics, and prints one JSON
line at the end (the full record is WORKDIR/results.json):
  {"task": "vtab/dtd", "method": "full", "top1": ..., "trainable_params": 85834799, "gmacs_per_image": ...,
   "throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ...}
85,834,799 trainable (`python experiments/param_counts.py --num_classes=47`); 17.58 GMACs per image, the dense
ViT-B/16 (`python experiments/bench_sparse_tuning.py`, dense row; docs/sparse_tuning.md).

Demo (embedded digits, random-init Ti/4 backbone with 4 blocks at 16 px trained from scratch, 20 epochs = 440
steps of batch 64, see vit_adapt/config_lib.py: apply_demo; CPU):

  python -m vit_adapt.main --config=configs/full_vtab.py:demo --workdir=runs/demo_full

prints {"task": "demo/digits", "method": "full", "top1": ..., "trainable_params": ..., "gmacs_per_image": ...,
"throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ...}; `python
experiments/demo_table.py` measured top-1 94.4%, 1,794,634 trainable parameters, 0.0307 GMACs per image
(README.md, the demo table).
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
