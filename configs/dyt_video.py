r"""DyT (Dynamic Tuning) video recognition on Kinetics-400 or Something-Something-v2 (`task=k400|ssv2`), or the
embedded moving-digits clips (`demo`).

Model (the official `main_video.py` / `video_vision_transformer_IN21K.py`, docs/video.md): the image ViT-B/16
ImageNet-21k checkpoint applied per frame (8 frames at 224 px, class token and 2-D position embedding per frame,
no temporal embedding), frozen, with DyT blocks (MLP dispatch, target activation rate 0.5, adapter bottleneck 64 at
scale 0.1, dropout 0.1); after the final LayerNorm the tokens of all frames feed an attentive pooling head (one
zero-initialised query, cross-attention, no residual) and the linear classifier (trunc-normal std 0.01); head,
adapters and routers train. Loss: the DyT loss (CE + 2.0 x rate loss + complete-model CE + distillation).

Recipe: AdamW lr 5e-4 (base 1e-3 x 128/256: the official per-GPU batch 16 x 8 GPUs), weight decay 0.01, 2 warm-up
epochs then cosine, drop-path 0, Inception normalisation ([-1, 1]); K400 12 epochs (8 frames stride 16, short-side
scale jitter [1, 1.15] x 224 + random crop + flip; test 3 temporal x 1 spatial views), SSv2 50 epochs (8-segment
sampling, RandAugment rand-m7-n4-mstd0.5-inc1 + random-resized crop (0.08-1), no flip; test 1 x 3 views); the
test views' logits are averaged per video. The protocol comes with the dataset (`config.video`, set by
vit_adapt/data/datasets.py).

  python -m vit_adapt.main --config=configs/dyt_video.py:task=k400 --config.dataset.root=data/k400 \
      --config.model.init=weights/ViT-B_16.npz --workdir=runs/dyt_video/k400

It ends with one JSON line {"task": "k400", "method": "dyt", "top1": ..., "top5": ..., "trainable_params": ...,
"gmacs_per_view": ..., "gmacs_per_video": ..., "views_per_video": ..., "throughput_clips_per_s": ...,
"peak_train_memory_bytes": ..., "wall_time_s": ..., "activation_rate": ...} (GMACs per view: the average over the
evaluated clips at their actual activation; per video: x the test views). Full numbers in WORKDIR/results.json.
Import a checkpoint trained with the official video code (attentive head included):

  python -m vit_adapt.convert --source=official-dyt --checkpoint=checkpoint.pth \
      --config=configs/dyt_video.py:task=k400 --out=runs/dyt_video_imported

Demo (embedded moving digits, 40 classes = digit x axis of motion; random-init frozen Ti/8 backbone with 4 blocks
at 32 px, 4 frames per clip (4 apart), 4 epochs = 256 steps of batch 32, test 2 temporal views; adapter
bottleneck 32; CPU):

  python -m vit_adapt.main --config=configs/dyt_video.py:demo --workdir=/tmp/dyt_video_demo

prints {"task": "demo/moving_digits", "method": "dyt", "top1": ..., "top5": ..., "gmacs_per_view": ...,
"gmacs_per_video": ..., "views_per_video": ..., "throughput_clips_per_s": ..., "wall_time_s": ...,
"activation_rate": ...}.
"""

from vit_adapt import config_lib

EPOCHS = {"k400": 12, "ssv2": 50}


def get_config(arg=None):
  config, args = config_lib.make_video_config("dyt", arg, video_model="frames")
  config.model.head_init_std = 0.01
  config.method.update(bottleneck=64, scale=0.1)
  if args["demo"]:
    config.method.update(bottleneck=32, scale=1.0)
    return config
  config.model.init = "weights/ViT-B_16.npz"
  config.train.update(batch_size=128, epochs=EPOCHS.get(config.dataset.name, 12), warmup_epochs=2,
                      log_every_steps=50, checkpoint_every_steps=1000)
  config.optim.update(lr=1e-3 * 128 / 256, min_lr=1e-6, wd=0.01)
  config.eval.batch_size = 16
  config.efficiency.batch_size = 8
  return config
