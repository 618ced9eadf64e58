r"""AdaptFormer (parallel bottleneck adapter) on a VTAB-1k task.

Recipe (AdaptFormer / NOAH VTAB-1k setting, also the baseline of DyT and Sparse-Tuning): ViT-B/16 ImageNet-21k
at 224 px, frozen; an adapter after every block's attention, parallel to the MLP (reading the post-attention
stream), bottleneck 64, scale 0.1, dropout 0.1, zero-initialised up-projection; the head trains too. AdamW lr
1e-3, weight decay 1e-4, batch 64, 100 epochs, 10 epochs of per-step linear warmup then cosine to 1e-5;
train800val200 -> test, no augmentation, pixels in [-1, 1], the last partial batch counted (16 steps per
epoch, 1600 steps).

Run (after preparing the data and getting the weights, see README.md; weights/ViT-B_16.npz is the default):

  python -m vit_adapt.main --config=configs/adapter_vtab.py:task=vtab/dtd \
      --config.dataset.data_dir=$HOME/tensorflow_datasets --workdir=runs/adapter/dtd

It logs the parameter table, a progress line with steps/s and ETA and the train metrics, and prints one JSON
line at the end (the full record is WORKDIR/results.json):
  {"task": "vtab/dtd", "method": "adapter", "top1": ..., "trainable_params": 1225775, "gmacs_per_image": ...,
   "throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ...}
1,225,775 trainable = 12 x 99,136 adapter + the 47-class head (`python experiments/param_counts.py
--num_classes=47`); 17.80 GMACs per image (`python experiments/bench_sparse_tuning.py`, adapter row, 100 classes;
docs/sparse_tuning.md).

Demo (embedded digits, random frozen Ti/4 backbone with 4 blocks at 16 px, 20 epochs = 440 steps of batch 64,
see vit_adapt/config_lib.py: apply_demo; adapter scale 1.0, see get_config; CPU):

  python -m vit_adapt.main --config=configs/adapter_vtab.py:demo --workdir=runs/demo_adapter

prints {"task": "demo/digits", "method": "adapter", "top1": 0.8916..., "trainable_params": 101258,
"gmacs_per_image": 0.0323..., "throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ...}
(`python experiments/demo_table.py` measured these numbers: README.md, the demo table).
"""

from vit_adapt import config_lib


def get_config(arg=None):
  config, args = config_lib.make_config("adapter", arg)
  if args["demo"]:
    # The demo's frozen backbone is random, not pre-trained: the adapters must carry the features themselves,
    # and at the recipe's scale 0.1 they learn too slowly for the demo's 20 epochs.
    config.method.scale = 1.0
  else:
    # The Google ViT-B/16 ImageNet-21k weights all four papers start from (README: "Get the weights").
    config.model.init = "weights/ViT-B_16.npz"
    config.train.keep_last_partial = True
  return config
