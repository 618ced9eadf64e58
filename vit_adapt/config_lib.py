"""The common experiment config and the `get_config(arg)` argument syntax shared by every file in `configs/`.

A config file calls `config_lib.make_config(method, arg, ...)` and then sets its recipe. `arg` is what follows
the colon in `--config=configs/x.py:ARG`: comma-separated `key=value` pairs and bare switches, e.g.
`task=vtab/dtd,seed=1` or `demo`. Unknown keys are errors naming the key.

Fields (every field is read somewhere; `validate` rejects unknown ones):

  seed                      PRNG seed of parameters, dropout and data order
  model.variant             'B/16', 'Ti/16', ... (big_vision names); model.depth/width/mlp_dim/num_heads override
  model.init                backbone checkpoint (Google .npz, timm .safetensors/.pth, a vit_adapt directory, or a name
                            such as vit-b16-in21k, downloaded once: docs/checkpoints.md)
  model.image_size          input resolution; position embeddings are resampled on load when it differs
  model.dtype               compute dtype: 'auto' (bfloat16 on GPU/TPU, float32 on CPU), 'float32' or 'bfloat16';
                            parameters and optimizer state stay float32
  model.pool, dropout, drop_path, head_init_std
  model.head                'linear' (the classifier) or 'upernet' (semantic segmentation: BEiT pyramid + UperNet +
                            auxiliary FCN head on the method's ViT, vit_adapt/models/dense.py); with 'upernet':
  model.feature_blocks      the 4 blocks (zero-based) whose patch tokens feed the pyramid, (3, 5, 7, 11) for 12
  model.head_channels, aux_channels, head_dropout  UperNet / FCN widths (768, 256) and their dropout (0.1)
  model.slide_stride, window_batch  sliding-window inference: stride in pixels between windows of
                            model.image_size (341 at 512) and windows per compiled forward
  model.remat               per-block rematerialisation, trading compute for training memory: '' (off), 'dots'
                            (keep matmul outputs, recompute the rest) or 'full' (keep block inputs only);
                            vit_adapt/models/remat.py. Same gradients, same results
  dataset.name              'vtab/<task>', a complete dataset ('cifar100', ...), 'fgvc/<name>' or 'demo/digits'
  dataset.source            'tfds' | 'folder' | 'demo'
  dataset.data_dir          tfds data dir ('' = tfds default);  dataset.root: folder-layout root
  dataset.split_lists       FGVC over tfds (source 'tfds'): the folder with VPT's train/val/test.json, which select
                            and label the tfds records by file name (docs/data.md); '' = unset (folder source)
  dataset.split / eval_split  'train800val200' + 'test' (VTAB-1k default) or 'train800' + 'val200'; complete
                            datasets 'train' + 'test'; FGVC 'train+val' + 'test' (tuning: 'train' + 'val')
  dataset.num_classes       from the task table unless set
  dataset.normalization     'minus_one_one' (Google checkpoints) or 'imagenet' (FGVC's default: VPT's recipe)
  dataset.augment, mixup, cutmix, label_smoothing  (augment: FGVC defaults to 'vpt_crop')
  dataset.num_threads, prefetch  grain read threads; batches prefetched per host
  dataset.cache_mb          keep decoded+resized training images in host memory when the split fits (0 = off)
  train.batch_size, epochs, warmup_epochs, steps (0 = from epochs), log/eval/checkpoint intervals;
  train.keep_last_partial   count a partial last batch as a step of the epoch (the papers' 16 steps/epoch on
                            1000 images at batch 64); batches themselves are always full
  train.keep_checkpoints    how many training checkpoints to keep (0 = all)
  train.accum_steps         gradient accumulation: each step runs batch_size / accum_steps examples at a time (a
                            divisor of batch_size; on N devices of batch_size / N) and makes one update with the
                            averaged gradients, the large batch's update (see train/step.py: accumulate for the
                            exceptions: in-model batch statistics, pairwise losses, random draws per micro-batch)
  optim.lr, min_lr, wd, b1, b2, eps, grad_clip, policies
  segmentation.aux_weight   weight of the auxiliary FCN head's loss (0.4)
  segmentation.scale        (long, short) of the mmseg resize: training rescales to it times a ratio in
                            segmentation.ratio_range, evaluation to it (keep ratio); (0, 0) = (4 S, S), S =
                            model.image_size (ADE20K: (2048, 512) at 512 px)
  segmentation.ratio_range, cat_max_ratio, photometric  training rescale ratios (0.5, 2.0), the crop's cap on
                            one category's share (0.75), photometric distortion on/off
  segmentation.eval_size    (H, W) canvas every evaluation image is padded to (static shapes, label 255 outside
                            the image) after its keep-ratio resize to segmentation.scale (shrunk further when it
                            does not fit); sliding windows cover the canvas. (0, 0) = (S, S)
  eval.batch_size;  efficiency.batch_size, efficiency.enabled
  video.model               video datasets: 'frames' (the image ViT per frame + an attentive pooling head over all
                            frame tokens, DyT's video model) | 'tubelet' (VideoMAE: 3-D patches, sinusoidal
                            positions, mean-pooled head) | 'none' (image tasks)
  video.num_frames, tubelet_size  frames per clip; frames per tubelet ('tubelet' model)
  video.class_token         'tubelet' model: prepend a (zero-initialised) token, e.g. as Sparse-Tuning's score token
  video.sampling, stride    'dense' (frames `stride` apart, K400) | 'segment' (one frame per segment, SSv2)
  video.augment, flip, scale, rrc_scale, randaugment  training transform: 'scale_jitter' (short side x U(scale),
                            random crop) | 'randaug_rrc' (RandAugment `randaugment`, random-resized crop of area
                            rrc_scale) | 'none'; `flip` a horizontal flip with probability 1/2
  video.temporal_views, spatial_views  test views per video (logits averaged): K400 3 x 1, SSv2 1 x 3
  video.skip_corrupt        skip (and count) undecodable videos instead of failing;  video.num_workers  decoding
                            processes (0 = grain's reader threads)
  method.name + the method's own fields (defaults from the method registry)
"""

from __future__ import annotations

import ast
import math

import ml_collections

from vit_adapt import methods
from vit_adapt.data import datasets
from vit_adapt.errors import UserError
from vit_adapt.models import remat

_SWITCHES = ("demo",)


def parse_arg(arg: str | None, allowed: dict) -> dict:
  """'task=vtab/dtd,demo' -> {'task': 'vtab/dtd', 'demo': True}; keys must be in `allowed` (name -> default)."""
  out = dict(allowed)
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    key, sep, value = part.partition("=")
    key = key.strip()
    if key not in allowed:
      raise UserError(f"unknown config argument {key!r} in {arg!r}. Allowed: {', '.join(sorted(allowed))} "
                      "(e.g. --config=configs/dyt_vtab.py:task=vtab/dtd,demo).")
    if not sep:
      out[key] = True
      continue
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def make_config(method: str, arg: str | None = None, **extra_args) -> tuple[ml_collections.ConfigDict, dict]:
  """The common config for `method` with the VTAB-1k protocol defaults; returns (config, parsed arg).

  The dataset's own protocol fields (`Dataset.config_defaults`: the split pair of complete and FGVC datasets,
  FGVC's augmentation and normalisation) replace the VTAB-1k ones, so every config file accepts every dataset;
  the config file's recipe and command-line overrides come after and win.
  Accepted arguments: task, seed, demo, plus `extra_args` (name -> default) that the config file reads itself.
  """

  args = parse_arg(arg, {"task": "vtab/cifar100", "seed": 0, "demo": False, **extra_args})
  c = base_config(method, task=args["task"], seed=int(args["seed"]))
  if args["demo"]:
    apply_demo(c)
  dataset = datasets.get_dataset(c.dataset.name)
  for key, value in dataset.config_defaults:
    block, _, field = key.rpartition(".")
    block = block or "dataset"
    if block not in c or field not in c[block]:
      raise UserError(f"dataset {dataset.name!r}: config_defaults names {key!r}, which is not a config.{block} "
                      f"field ({', '.join(sorted(c[block].keys())) if block in c else 'no such block'}).")
    c[block][field] = value
  c.dataset.num_classes = dataset.num_classes
  return c, args


def base_config(method: str, *, task: str = "vtab/cifar100", seed: int = 0) -> ml_collections.ConfigDict:
  """Every field with its default (no task lookup): the schema `validate` checks configs against."""

  c = ml_collections.ConfigDict()
  c.seed = seed

  c.model = ml_collections.ConfigDict(dict(
      variant="B/16", init="", image_size=224, dtype="auto", pool="tok", dropout=0.0, drop_path=0.0,
      head_init_std=0.0, depth=0, width=0, mlp_dim=0, num_heads=0, remat="",
      head="linear", feature_blocks=(3, 5, 7, 11), head_channels=768, aux_channels=256, head_dropout=0.1,
      slide_stride=341, window_batch=8))

  c.dataset = ml_collections.ConfigDict(dict(
      name=task, source="tfds", data_dir="", root="", split_lists="", split="train800val200",
      eval_split="test", num_classes=-1, normalization="minus_one_one", augment="none", mixup=0.0, cutmix=0.0,
      label_smoothing=0.0, num_threads=8, prefetch=4, cache_mb=4096))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=64, epochs=100, warmup_epochs=10, steps=0, log_every_steps=20, eval_every_epochs=0,
      checkpoint_every_steps=500, keep_checkpoints=2, keep_last_partial=False, accum_steps=1))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, min_lr=1e-5, wd=1e-4, b1=0.9, b2=0.999, eps=1e-8, grad_clip=0.0,
      # Per-parameter policies: tuples (regex, 'frozen' | 'lr=<mult>' | 'wd=<mult>'), first match wins.
      policies=()))

  c.segmentation = ml_collections.ConfigDict(dict(
      aux_weight=0.4, scale=(0, 0), ratio_range=(0.5, 2.0), cat_max_ratio=0.75, photometric=True,
      eval_size=(0, 0)))

  c.eval = ml_collections.ConfigDict(dict(batch_size=256))
  c.efficiency = ml_collections.ConfigDict(dict(enabled=True, batch_size=64, repeats=5))
  # Video datasets (task 'video'); image tasks ignore the block. The datasets set their official protocol here
  # (`Dataset.config_defaults`); see docs/video.md.
  c.video = ml_collections.ConfigDict(dict(
      model="none", num_frames=8, tubelet_size=2, class_token=False, sampling="dense", stride=16,
      augment="scale_jitter", flip=True, scale=(1.0, 1.15), rrc_scale=(0.08, 1.0), randaugment="",
      temporal_views=3, spatial_views=1, skip_corrupt=False, num_workers=0))

  c.method = methods.get(method).defaults()
  c.method.name = method
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first key that is not in the schema (`base_config` + the method's defaults)
  or that the schema has and `config` lacks: every field is read somewhere, so a typo is never silently ignored.
  Then every numeric field must be in its range (`check_ranges`), so a bad number fails before any work.
  """
  if "method" not in config or "name" not in config.method:
    raise UserError("config.method.name is missing: build configs with vit_adapt.config_lib.make_config.")
  schema = base_config(config.method.name)

  def check(cfg, ref, prefix):
    for key in cfg.keys():
      if key not in ref:
        raise UserError(f"unknown config key 'config.{prefix}{key}'. Known keys under "
                        f"'config.{prefix[:-1] or '*'}': {', '.join(sorted(ref.keys()))}.")
      if isinstance(ref[key], ml_collections.ConfigDict):
        if not isinstance(cfg[key], ml_collections.ConfigDict):
          raise UserError(f"config.{prefix}{key} must be a block of fields, not {cfg[key]!r}.")
        check(cfg[key], ref[key], f"{prefix}{key}.")
    for key in ref.keys():
      if key not in cfg:
        raise UserError(f"config key 'config.{prefix}{key}' is missing (build configs with "
                        "vit_adapt.config_lib.make_config, which sets every field).")

  check(config, schema, "")
  check_ranges(config)


# The allowed range of every numeric field: '(0, inf)' = positive, '[0, inf)' = non-negative, '[0, 1)' = a
# fraction below one. A value outside (a zero batch, a negative step count or learning rate) would fail deep in
# the run (a division by zero, an empty schedule) or silently train something else.
_RANGES = {
    "model.image_size": "(0, inf)", "model.dropout": "[0, 1)", "model.drop_path": "[0, 1)",
    "model.head_init_std": "[0, inf)", "model.depth": "[0, inf)", "model.width": "[0, inf)",
    "model.mlp_dim": "[0, inf)", "model.num_heads": "[0, inf)",
    "model.head_channels": "(0, inf)", "model.aux_channels": "(0, inf)", "model.head_dropout": "[0, 1)",
    "model.slide_stride": "(0, inf)", "model.window_batch": "(0, inf)", "segmentation.aux_weight": "[0, inf)",
    "segmentation.cat_max_ratio": "(0, inf)",
    "dataset.mixup": "[0, inf)", "dataset.cutmix": "[0, inf)", "dataset.label_smoothing": "[0, 1)",
    "dataset.num_threads": "[0, inf)", "dataset.prefetch": "[0, inf)", "dataset.cache_mb": "[0, inf)",
    "train.batch_size": "(0, inf)", "train.epochs": "[0, inf)", "train.warmup_epochs": "[0, inf)",
    "train.steps": "[0, inf)", "train.log_every_steps": "[0, inf)", "train.eval_every_epochs": "[0, inf)",
    "train.checkpoint_every_steps": "[0, inf)", "train.keep_checkpoints": "[0, inf)", "train.accum_steps": "(0, inf)",
    "optim.lr": "(0, inf)", "optim.min_lr": "[0, inf)", "optim.wd": "[0, inf)", "optim.b1": "[0, 1)",
    "optim.b2": "[0, 1)", "optim.eps": "[0, inf)", "optim.grad_clip": "[0, inf)",
    "eval.batch_size": "(0, inf)", "efficiency.batch_size": "(0, inf)", "efficiency.repeats": "(0, inf)",
    "video.num_frames": "(0, inf)", "video.tubelet_size": "(0, inf)", "video.stride": "(0, inf)",
    "video.temporal_views": "(0, inf)", "video.spatial_views": "(0, inf)", "video.num_workers": "[0, inf)",
}


def _in_range(x: float, interval: str) -> bool:
  lo, hi = (float(b) for b in interval[1:-1].split(","))
  return (lo <= x if interval[0] == "[" else lo < x) and (x <= hi if interval[-1] == "]" else x < hi)


def _describe_range(interval: str) -> str:
  return {"(0, inf)": "> 0", "[0, inf)": ">= 0"}.get(interval, f"in {interval}")


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first numeric field outside its range (`_RANGES`) and the allowed range."""
  for key, interval in _RANGES.items():
    block, field = key.split(".")
    value = config[block][field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise UserError(f"config.{key}={value!r} is not a number; it must be a number {_describe_range(interval)}.")
    if not math.isfinite(value) or not _in_range(value, interval):
      raise UserError(f"config.{key}={value!r} is out of range: it must be {_describe_range(interval)}. "
                      f"Set --config.{key} to a value {_describe_range(interval)}.")
  accum, batch = config.train.accum_steps, config.train.batch_size
  if not isinstance(accum, int) or batch % accum:
    raise UserError(f"config.train.accum_steps={accum!r} must be a whole number that divides config.train.batch_size="
                    f"{batch} (the batch is split into accum_steps equal micro-batches): set it to a divisor of "
                    f"{batch}.")
  remat.check_policy(config.model.remat)
  n = config.dataset.num_classes
  if isinstance(n, bool) or not isinstance(n, int) or not (n == -1 or n >= 1):
    raise UserError(f"config.dataset.num_classes={n!r} is out of range: it must be >= 1 (or -1: from the task "
                    "table). Set --config.dataset.num_classes to the number of classes of the dataset.")


def apply_demo(c: ml_collections.ConfigDict) -> None:
  """The embedded-dataset demo: a small ViT from scratch on scikit-learn's digits (wall times: README's demo table,
  measured by experiments/demo_table.py).

  The 8x8 digits are upsampled to 16 px and cut into 4x4 patches: 16 tokens carry all the information and cost
  a quarter of 32 px (64 tokens), which is what fits the whole job (20 epochs = 440 steps, two evaluations, the
  efficiency report) in the time budget. There are no pre-trained weights: the backbone is a seeded random init.
  """
  c.model.update(variant="Ti/4", image_size=16, depth=4, init="")
  c.dataset.update(name="demo/digits", source="demo", split="train", eval_split="test")
  c.train.update(batch_size=64, epochs=20, warmup_epochs=2, log_every_steps=50, eval_every_epochs=10,
                 checkpoint_every_steps=200)
  c.optim.update(lr=1e-3, min_lr=1e-5, wd=1e-4)
  c.eval.batch_size = 256
  c.efficiency.batch_size = 64


VIDEO_TASKS = {"k400": "k400", "ssv2": "ssv2", "demo": "demo/moving_digits"}


def make_video_config(method: str, arg: str | None, video_model: str) -> tuple[ml_collections.ConfigDict, dict]:
  """The common config of a video config file: `task=k400|ssv2|demo` (or a video dataset's name), `seed`, and
  the `demo` switch (= task=demo: `apply_video_demo`). The dataset's protocol fills `config.video`."""
  args = parse_arg(arg, {"task": "k400", "seed": 0, "demo": False})
  demo = bool(args["demo"]) or args["task"] == "demo"
  task = VIDEO_TASKS.get("demo" if demo else args["task"], args["task"])
  c, _ = make_config(method, f"task={task},seed={int(args['seed'])}")
  c.video.model = video_model
  if demo:
    apply_video_demo(c)
  return c, {**args, "task": task, "demo": demo}


def apply_video_demo(c: ml_collections.ConfigDict) -> None:
  """The embedded moving-digits clips (`demo/moving_digits`, 40 classes) on a small random-init ViT at 32 px with
  8 x 8 patches and 4 frames per clip, 4 apart (the 16-frame clips' dataset protocol otherwise: test 2 temporal
  views); 4 epochs = 256 steps of batch 32 (measured wall and CPU times: docs/video.md)."""
  c.model.update(variant="Ti/8", image_size=32, depth=4, init="")
  c.video.update(num_frames=4, stride=4)
  c.train.update(batch_size=32, epochs=4, warmup_epochs=1, log_every_steps=32, eval_every_epochs=0,
                 checkpoint_every_steps=128)
  c.optim.update(lr=1e-3, min_lr=1e-5, wd=1e-4)
  c.eval.batch_size = 64
  c.efficiency.update(batch_size=8, repeats=3)
