r"""Batch inference with a vit_adapt model directory (from `convert`, or a training workdir's `model/`).

  python -m vit_adapt.predict --checkpoint=runs/dyt_dtd --images='photos/*.jpg' --output=preds.jsonl
  python -m vit_adapt.predict --checkpoint=models/ti_dtd --array=images.npy --logits=logits.npy
  python -m vit_adapt.predict --checkpoint=runs/dyt_video/k400 --videos='clips/*.mp4'   (a video model)
  python -m vit_adapt.predict --checkpoint=runs/dyt_ade20k --images=photos/ --masks=masks/ [--overlay]
                                                                                   (a segmentation model)

`--images` takes a folder or a glob; files are decoded and resized (bicubic) to the model's resolution, and
files that are not images are skipped with a warning. `--array` takes a uint8 (N, H, W, 3) `.npy` already at the
model's resolution. Pixels are normalised as the model was trained (`config.dataset.normalization`, [-1, 1] by
default). The model runs its own inference path (`model(images, train=False)`: token dispatch, pruning, early
exits as the method does them) in batches padded to one static shape, so it compiles once.

Output: one JSON line per image, {"index", "path", "top_classes", "top_probs"} (top 5), to `--output` or
stdout; `--logits` also saves the raw (N, num_classes) float32 logits.

A segmentation model (`config.model.head='upernet'`) writes masks instead: `--masks=DIR` gets `<name>.png` per
image, at the image's size, a palette PNG whose pixel values are the class ids (the dataset's palette: ADE20K's
150 colours, the demo's), made by the task's evaluation path (its resize, sliding windows and overlap averaging:
vit_adapt/tasks/segmentation_predict.py); `--overlay` adds `<name>_overlay.png`, the image blended with the mask's
colours. The JSON lines then read {"index", "path", "mask", "overlay"}.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Iterator

import numpy as np
from absl import flags, logging
from PIL import Image

from vit_adapt import cli
from vit_adapt.errors import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defined when run as a program only, so `predict()` imports as a library without flag clashes."""
  flags.DEFINE_string("checkpoint", None, "A model directory, or a training workdir with model/ inside.")
  flags.DEFINE_string("images", None, "A folder of images or a glob pattern (quote it).")
  flags.DEFINE_string("array", None, "A .npy of uint8 images (N, H, W, 3) at the model's resolution (a video "
                      "model: clips (N, T, H, W, 3), one view of the config's frame count each).")
  flags.DEFINE_string("videos", None, "A video model: a folder of videos or a glob pattern (quote it); each video "
                      "is read as the config's test views and their logits averaged.")
  flags.DEFINE_string("output", None, "Where to write the JSON lines (default: stdout).")
  flags.DEFINE_string("logits", None, "Optional .npy path for the raw logits (N, num_classes).")
  flags.DEFINE_integer("batch_size", 64, "Images per forward pass (the last batch is padded); with --masks, "
                       "canvases per pass, by default the config's eval.batch_size.")
  flags.DEFINE_integer("top_k", 5, "How many classes each output line lists.")
  flags.DEFINE_string("masks", None, "A segmentation model: the folder for the PNG masks (<name>.png per image).")
  flags.DEFINE_bool("overlay", False, "With --masks: also write <name>_overlay.png, the image blended with its mask.")


def list_image_files(spec: str) -> list[str]:
  """A folder (its files, sorted) or a glob pattern -> paths; an empty result is an error."""
  if os.path.isdir(spec):
    paths = sorted(os.path.join(spec, f) for f in os.listdir(spec))
    paths = [p for p in paths if os.path.isfile(p)]
  else:
    paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
  if not paths:
    what = "folder" if os.path.isdir(spec) else "pattern"
    raise UserError(f"--images={spec}: the {what} matches no files. Pass a folder of images or a quoted glob "
                    "such as 'photos/*.jpg'.")
  return paths


def decode_images(paths: list[str], size: int | None) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (path, uint8 (size, size, 3), or the image's own size for size=None); files that are not decodable
  images are skipped with a warning."""
  from vit_adapt.data import images
  for path in paths:
    try:
      img = images.decode(path)
    except UserError:  # an image whose pixel values cannot be read as 8 bits (names the file)
      raise
    except Exception as e:  # PIL raises UnidentifiedImageError/OSError/ValueError on non-images
      logging.warning("skipping %s: not a readable image (%s)", path, type(e).__name__)
      continue
    yield path, img if size is None else images.resize(img, size)


def load_array(path: str, size: int, frames: int = 0) -> np.ndarray:
  if not os.path.isfile(path):
    raise UserError(f"--array={path} does not exist.")
  with open(path, "rb") as f:
    magic = f.read(6)
  # numpy calls any file without its magic "pickled data"; say what it is not instead.
  if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
    raise UserError(f"--array={path} is not a .npy array file (no numpy header); save the uint8 images with "
                    f"np.save(path, x) (shape (N, {size}, {size}, 3)), or pass image files with --images.")
  try:
    x = np.load(path, allow_pickle=False)
  except Exception as e:  # pickled objects, truncated or non-.npy files
    raise UserError(f"--array={path} is not a readable .npy of plain numbers ({type(e).__name__}: {e}).") from None
  if not isinstance(x, np.ndarray):
    raise UserError(f"--array={path} holds several arrays (.npz); save one uint8 array with np.save.")
  if x.dtype != np.uint8:
    raise UserError(f"--array={path} has dtype {x.dtype}; it must be uint8 pixels 0..255 (N, {size}, {size}, 3). "
                    "Convert with x.astype(np.uint8) if it holds 0..255 values, or use --images.")
  if frames:  # a video model: (N, T, S, S, 3) clips
    if x.ndim != 5 or x.shape[1:] != (frames, size, size, 3) or x.shape[0] == 0:
      raise UserError(f"--array={path} has shape {x.shape}; the video model needs uint8 clips (N, {frames}, {size}, "
                      f"{size}, 3): {frames} frames at its resolution {size}.")
    return x
  if x.ndim != 4 or x.shape[1:] != (size, size, 3) or x.shape[0] == 0:
    raise UserError(f"--array={path} has shape {x.shape}; the model needs (N, {size}, {size}, 3) uint8 images at "
                    f"its resolution {size} (use --images to resize files).")
  return x


class Predictor:
  """The model's inference function compiled once for a static batch; pads the last batch."""

  def __init__(self, model, variables, normalization: str, batch_size: int):
    import jax
    from vit_adapt.data import images
    self.variables = variables
    self.batch_size = batch_size
    self.normalize = lambda x: images.normalize(x, normalization)
    self.forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])

  def logits(self, batch_uint8: np.ndarray) -> np.ndarray:
    n = batch_uint8.shape[0]
    pad = self.batch_size - n
    x = self.normalize(batch_uint8)
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    return np.asarray(self.forward(self.variables, x))[:n]


def batches(items, batch_size: int):
  buf = []
  for item in items:
    buf.append(item)
    if len(buf) == batch_size:
      yield buf
      buf = []
  if buf:
    yield buf


def top_k(logits: np.ndarray, k: int):
  z = logits - logits.max(-1, keepdims=True)
  probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  return idx, np.take_along_axis(probs, idx, -1)


def decode_videos(paths: list[str], config) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (path, uint8 (V, T, S, S, 3)): the config's test views; undecodable files are skipped with a warning."""
  from vit_adapt.data.video import pipeline as video_pipeline
  views = video_pipeline.test_views(config, num_classes=1 << 30)
  for path in paths:
    record = views({"path": path, "label": 0, "where": path})
    if record["skipped"]:
      continue
    yield path, record["video"]


def predict(checkpoint: str, *, images: str | None = None, array: str | None = None, videos: str | None = None,
            batch_size: int = 64, k: int = 5) -> tuple[list[dict], np.ndarray]:
  """Library form of the CLI: -> (records, logits (N, C))."""
  if sum(map(bool, (images, array, videos))) != 1:
    raise UserError("pass exactly one of --images=FOLDER_OR_GLOB, --videos=FOLDER_OR_GLOB or --array=X.npy.")
  if batch_size < 1:
    raise UserError(f"--batch_size={batch_size} must be positive.")
  from vit_adapt import methods  # after flag parsing: keeps `--help` fast
  config, model, _, variables = methods.load_model_dir(checkpoint)
  if config.model.get("head", "linear") != "linear":
    raise UserError(f"{checkpoint} holds a segmentation model: pass --images=FOLDER_OR_GLOB with --masks=DIR (PNG "
                    "masks per image) instead.")
  size = config.model.image_size
  is_video = methods.build.video_kind(config) != "none"
  if (videos or images) and bool(videos) != is_video:
    raise UserError(f"--{'videos' if videos else 'images'} needs {'a video' if videos else 'an image'} model; "
                    f"{checkpoint} holds {'a video' if is_video else 'an image'} model (use --"
                    f"{'images' if videos else 'videos'} or --array).")
  if array:
    x = load_array(array, size, int(config.video.num_frames) if is_video else 0)
    items = [(f"{array}[{i}]", img) for i, img in enumerate(x)]
    batch_size = min(batch_size, len(items))
  elif videos:
    config.video.skip_corrupt = True  # a file that is not a video is skipped with a warning, as for images
    paths = list_image_files(videos)
    items = decode_videos(paths, config)
    batch_size = min(batch_size, len(paths))
  else:
    paths = list_image_files(images)
    items = decode_images(paths, size)
    batch_size = min(batch_size, len(paths))
  predictor = Predictor(model, variables, config.dataset.get("normalization", "minus_one_one"), batch_size)
  names, outs = [], []
  for batch in batches(items, batch_size):
    names += [p for p, _ in batch]
    outs.append(predictor.logits(np.stack([img for _, img in batch])))
  if not outs:
    what = "video" if videos else "image"
    raise UserError(f"--{what}s={videos or images}: none of the files is a readable {what}.")
  logits = np.concatenate(outs).astype(np.float32)
  idx, probs = top_k(logits, min(k, logits.shape[-1]))
  records = [{"index": i, "path": None if array else name, "top_classes": idx[i].tolist(),
              "top_probs": [round(float(p), 6) for p in probs[i]]} for i, name in enumerate(names)]
  class_names = _class_names(config)
  if class_names:
    for r in records:
      r["top_names"] = [class_names[c] for c in r["top_classes"]]
  return records, logits


def predict_masks(checkpoint: str, *, images: str, masks: str, overlay: bool = False,
                  batch_size: int | None = None) -> list[dict]:
  """A segmentation model: images -> `masks`/<name>.png (and <name>_overlay.png); -> one record per image.
  `batch_size`: canvases per forward, by default the config's evaluation batch (a canvas holds several windows
  and C logits per pixel: the classifier's 64 would not fit in memory at 512 px)."""
  if not images:
    raise UserError("--masks needs --images=FOLDER_OR_GLOB (a segmentation model predicts image files).")
  if batch_size is not None and batch_size < 1:
    raise UserError(f"--batch_size={batch_size} must be positive.")
  if not os.path.isdir(masks):
    raise UserError(f"--masks={masks} is not a folder. Create it first (mkdir -p) or write somewhere else.")
  paths = list_image_files(images)
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  clash = sorted({s for s in stems if stems.count(s) > 1})
  if clash:
    raise UserError(f"--images={images}: several files are named {clash[0]!r} (up to the extension); their masks "
                    "would overwrite each other. Rename them or predict them separately.")
  from vit_adapt import methods  # after flag parsing: keeps `--help` fast
  from vit_adapt.tasks import segmentation_predict
  config, model, _, variables = methods.load_model_dir(checkpoint)
  if config.model.get("head", "linear") == "linear":
    raise UserError(f"--masks needs a segmentation model; {checkpoint} holds a classifier (drop --masks).")
  batch_size = batch_size or int(config.eval.batch_size)
  predictor = segmentation_predict.MaskPredictor(config, model, variables, min(batch_size, len(paths)))
  colours = segmentation_predict.palette(config)
  records = []
  for path, image, mask in predictor.masks(decode_images(paths, None)):
    stem = os.path.join(masks, os.path.splitext(os.path.basename(path))[0])
    segmentation_predict.mask_png(mask, colours).save(stem + ".png")
    record = {"index": len(records), "path": path, "mask": stem + ".png", "overlay": None}
    if overlay:
      Image.fromarray(segmentation_predict.overlay(image, mask, colours)).save(stem + "_overlay.png")
      record["overlay"] = stem + "_overlay.png"
    records.append(record)
  if not records:
    raise UserError(f"--images={images}: none of the files is a readable image.")
  return records


def _class_names(config) -> tuple:
  """The dataset's class names when its task knows them and they are available (else ())."""
  from vit_adapt import tasks
  task = tasks.for_config(config)
  if task.class_names is None:
    return ()
  try:
    names = tuple(task.class_names(config))
  except UserError:  # e.g. the dataset's folder is not on this machine
    return ()
  return names if len(names) >= int(config.dataset.num_classes) else ()


def check_writable(path: str, flag: str) -> None:
  """An output path must be writable before any inference runs: a missing folder found afterwards loses it."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise UserError(f"--{flag}={path} is a directory; give a file path inside it.")
  if not os.path.isdir(folder):
    raise UserError(f"--{flag}={path}: the folder {folder} does not exist. Create it first (mkdir -p) or write "
                    "somewhere else.")
  if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
    raise UserError(f"--{flag}={path} is not writable (permissions of {path if os.path.exists(path) else folder}). "
                    "Write somewhere else.")


def _write_lines(records: list[dict], output: str | None) -> None:
  lines = "".join(json.dumps(r) + "\n" for r in records)
  if output:
    with open(output, "w") as f:
      f.write(lines)
  else:
    sys.stdout.write(lines)


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.checkpoint:
    raise UserError("--checkpoint=DIR is required (a model directory or a training workdir).")
  for flag in ("output", "logits"):
    if getattr(FLAGS, flag):
      check_writable(getattr(FLAGS, flag), flag)
  if FLAGS.masks:
    records = predict_masks(FLAGS.checkpoint, images=FLAGS.images, masks=FLAGS.masks, overlay=FLAGS.overlay,
                            batch_size=FLAGS.batch_size if FLAGS["batch_size"].present else None)
    _write_lines(records, FLAGS.output)
    print(f"wrote {len(records)} masks to {FLAGS.masks}", file=sys.stderr)
    return
  if FLAGS.overlay:
    raise UserError("--overlay goes with --masks=DIR (a segmentation model).")
  records, logits = predict(FLAGS.checkpoint, images=FLAGS.images, array=FLAGS.array, videos=FLAGS.videos,
                            batch_size=FLAGS.batch_size, k=FLAGS.top_k)
  _write_lines(records, FLAGS.output)
  if FLAGS.logits:
    np.save(FLAGS.logits, logits)
  print(f"predicted {len(records)} images", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
