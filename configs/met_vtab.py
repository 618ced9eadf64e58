r"""MET (Multiple-Exit Tuning) on a VTAB-1k task.

The paper (arXiv 2409.13999) has no public code; every choice it leaves open is ours (docs/met.md): exits after
blocks 4, 6, 8, 10, 12 of a frozen ViT-B/16 ImageNet-21k at 224 px, each an LN + linear head on the class token
(the last one is the backbone's final norm + head); E-adapters (bottleneck 8, GELU, scale 0.1) parallel to every
MLP with down/up projections shared by all exits and an exit-specific r x r map M_k + scale s_k on the class
token; loss = sum of the 5 exit cross-entropies + 0.1 x label-graph regulariser on the early exits. AdamW lr 1e-3,
weight decay 1e-4, batch 64, 100 epochs (10 warmup, cosine to 1e-5); train800val200 -> test, no augmentation.

Train, calibrate the exit thresholds for a budget, sweep the accuracy-vs-GMACs curve:

  python -m vit_adapt.main --config=configs/met_vtab.py:task=vtab/dtd \
      --config.model.init=weights/ViT-B_16.npz --workdir=runs/met/dtd
  python -m vit_adapt.met_calibrate --checkpoint=runs/met/dtd --budget=0.6
  python -m vit_adapt.curve --checkpoint=runs/met/dtd --output=runs/met/dtd/curve

The calibration split must be held out from the training split: val200 is part of train800val200, so the run
above calibrates on data it trained on (over-confident thresholds; met_calibrate prints a `warning:` line and
records it, and `--require_held_out` refuses). The held-out protocol: train on train800, calibrate on val200
(met_calibrate's default for VTAB-1k), then copy `config.method.thresholds` into the train800val200 run if wanted:

  python -m vit_adapt.main --config=configs/met_vtab.py:task=vtab/dtd --config.model.init=weights/ViT-B_16.npz \
      --config.dataset.split=train800 --config.dataset.eval_split=val200 --workdir=runs/met/dtd_train800
  python -m vit_adapt.met_calibrate --checkpoint=runs/met/dtd_train800 --budget=0.6 --require_held_out

Demo (embedded digits, random-init frozen Ti/4 backbone with 4 blocks at 16 px, 20 epochs = 440 steps of batch 64,
see vit_adapt/config_lib.py: apply_demo; exits after blocks 1-4, see get_config; CPU):

  python -m vit_adapt.main --config=configs/met_vtab.py:demo --workdir=/tmp/met_demo

ends printing {"task": "demo/digits", "method": "met", "top1": ..., "trainable_params": ..., "gmacs_per_image":
..., "throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ..., "exit": ..., "gmacs": ...,
"exit_top1": [...]} (`top1` is the last exit's: no thresholds are calibrated yet; `exit`, the mean zero-based exit
index, `gmacs` and `exit_top1`, each exit's own top-1 with the first exit first, are the method's evaluation
statistics); `python experiments/demo_table.py --methods=met` measured top-1 73.9%, 22,604
trainable parameters, 0.0309 GMACs per image. Then

  python -m vit_adapt.met_calibrate --checkpoint=/tmp/met_demo --budget=0.6
  python -m vit_adapt.curve --checkpoint=/tmp/met_demo --output=/tmp/met_demo/curve

(docs/met.md shows the tables and the plot they printed for an earlier, larger demo setting).
"""

from vit_adapt import config_lib


def get_config(arg=None):
  config, args = config_lib.make_config("met", arg)
  config.method.graph_weight = 0.1
  if args["demo"]:
    config.method.exits = (1, 2, 3, 4)  # the demo backbone has 4 blocks
  else:
    # The Google ViT-B/16 ImageNet-21k weights all four papers start from (README: "Get the weights").
    config.model.init = "weights/ViT-B_16.npz"
    config.train.keep_last_partial = True
  return config
