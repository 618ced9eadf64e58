r"""Sparse-Tuning video recognition on a VideoMAE ViT-B (`task=k400|ssv2`), or the embedded moving-digits clips
(`demo`).

Model (the paper's video setting; the released `models/vit_video.py` does not build, docs/video.md): VideoMAE's
ViT-B (16 frames at 224 px, tubelet embedding 2 x 16 x 16 -> 8 x 14 x 14 = 1568 tokens, fixed sinusoidal
positions, no class token, mean pooling + fc_norm), frozen, loaded from VideoMAE's released `.pth` (tensors only);
token sparsification in blocks 3, 6, 9 (zero-based) keeping ceil(0.7 N) tokens, the rest fused into one token;
a Dense Adapter per block; head = non-affine BatchNorm + linear (trunc-normal std 0.01). Without a class token
the tokens are scored by the attention they receive, mean over heads and queries
(`config.method.token_score=mean_attention`; `cls_attention` with `--config.video.class_token=True` scores them
by an added zero-initialised token instead: the public material does not say which the paper used).

Protocol (VideoMAE's fine-tuning, which the paper follows): K400 16 frames at stride 4, SSv2 16-segment sampling;
test views K400 5 temporal x 3 spatial, SSv2 2 x 3, logits averaged per video; ImageNet normalisation (VideoMAE's).
Optimiser (the paper gives none for video: our choice, marked as such): AdamW lr 1e-3 x 64/256, weight decay 0.05,
batch 64, 5 warm-up epochs then cosine; K400 30 epochs, SSv2 40 epochs.

  python -m vit_adapt.main --config=configs/sparse_tuning_video.py:task=k400 --config.dataset.root=data/k400 \
      --config.model.init=weights/videomae_vit_b_k400.pth --workdir=runs/sparse_tuning_video/k400

It ends with one JSON line {"task": "k400", "method": "sparse_tuning", "top1": ..., "top5": ...,
"trainable_params": ..., "gmacs_per_view": ..., "gmacs_per_video": ..., "views_per_video": ...,
"throughput_clips_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ...}. The baselines run on the
same VideoMAE model with `--config.method.name=linear|full|adapter` (see docs/video.md). Full numbers in
WORKDIR/results.json.

Demo (embedded moving digits, 40 classes; random-init frozen Ti/8 tubelet backbone with 4 blocks at 32 px, 4 frames
per clip = 2 x 16 tokens, 4 epochs = 256 steps of batch 32, sparsification in the zero-based blocks 1, 2, 3; CPU):

  python -m vit_adapt.main --config=configs/sparse_tuning_video.py:demo --workdir=/tmp/sparse_tuning_video_demo

prints {"task": "demo/moving_digits", "method": "sparse_tuning", "top1": ..., "top5": ..., "gmacs_per_view": ...,
"gmacs_per_video": ..., "views_per_video": ..., "throughput_clips_per_s": ..., "wall_time_s": ...}.
"""

from vit_adapt import config_lib

PROTOCOL = {  # VideoMAE's fine-tuning sampling and test views
    "k400": dict(num_frames=16, stride=4, temporal_views=5, spatial_views=3),
    "ssv2": dict(num_frames=16, temporal_views=2, spatial_views=3),
}
EPOCHS = {"k400": 30, "ssv2": 40}


def get_config(arg=None):
  config, args = config_lib.make_video_config("sparse_tuning", arg, video_model="tubelet")
  config.model.head_init_std = 0.01
  config.method.token_score = "mean_attention"
  if args["demo"]:
    config.method.sparse_blocks = (1, 2, 3)
    return config
  config.video.update(PROTOCOL.get(config.dataset.name, {}))
  config.dataset.normalization = "imagenet"
  config.model.init = "weights/videomae_vit_b_k400.pth"
  config.train.update(batch_size=64, epochs=EPOCHS.get(config.dataset.name, 30), warmup_epochs=5,
                      log_every_steps=50, checkpoint_every_steps=1000)
  config.optim.update(lr=1e-3 * 64 / 256, min_lr=1e-6, wd=0.05)
  config.eval.batch_size = 8
  config.efficiency.batch_size = 4
  return config
