r"""Input-pipeline throughput: decoded + resized images per second on the folder and tfds (ArrayRecord) paths.

  python experiments/input_throughput.py                 # 1 and 2 grain threads, 224 px, batch 64
  python experiments/input_throughput.py --threads=1,4,8,16 --num_images=2048

Generates JPEGs (natural-image size 500x375, like DTD / Flowers / Pets / Caltech, and 32x32 like CIFAR / SVHN),
writes them both as a NOAH/VPT image folder and as a tfds ArrayRecord dataset (a small local builder), and times
the real `pipeline.train_iterator` / `eval_batches` (decode, bicubic resize, normalise to float32, batch):
  * train, first epoch: every image read, decoded and resized (the in-memory cache disabled);
  * train, cached: later epochs of a VTAB-1k run, records served from the lazy in-memory cache;
  * train, inception crop: the complete-dataset recipe (RandomResizedCrop + flip, never cached);
  * eval: deterministic padded batches.
`decode+resize` is the bare per-core cost of PIL decoding and resizing one image, without grain.
Per core = images per CPU-second of the whole process (all threads, incl. batching and normalisation), which is
what matters on a shared machine; wall-clock images/s is printed beside it.
"""

from __future__ import annotations

import itertools
import os
import platform
import sys
import tempfile
import time

from absl import app, flags
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

FLAGS = flags.FLAGS
flags.DEFINE_list("threads", ["1", "2"], "grain read threads to try.")
flags.DEFINE_integer("num_images", 512, "Images per generated dataset.")
flags.DEFINE_integer("batch_size", 64, "Per-host batch size.")
flags.DEFINE_integer("image_size", 224, "Model resolution.")
flags.DEFINE_integer("batches", 16, "Timed batches per measurement (after one warm-up batch).")

SHAPES = {"500x375": (375, 500), "32x32": (32, 32)}


def _make_images(folder: str, n: int, hw: tuple[int, int], seed: int = 0) -> list[str]:
  """Smooth colour fields with texture: JPEG sizes and decode costs close to photos (noise-only files are not)."""
  rng = np.random.default_rng(seed)
  h, w = hw
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  rels = []
  os.makedirs(os.path.join(folder, "images"), exist_ok=True)
  for i in range(n):
    f = rng.uniform(0.005, 0.05, size=3)
    phase = rng.uniform(0, 6.3, size=3)
    img = np.stack([127 + 100 * np.sin(f[c] * (xx + 0.7 * yy) + phase[c]) for c in range(3)], -1)
    img += rng.normal(0, 12, size=(h, w, 1))
    rel = f"images/{i:05d}.jpg"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(folder, rel), quality=90)
    rels.append(rel)
  return rels


def _write_lists(folder: str, rels: list[str]) -> None:
  for split in ("train800val200", "test"):
    with open(os.path.join(folder, f"{split}.txt"), "w") as f:
      f.writelines(f"{r} {i % 47}\n" for i, r in enumerate(rels))


def _tfds_dataset(data_dir: str, name: str, paths: list[str]) -> str:
  """A local tfds builder holding the same JPEG bytes, prepared as ArrayRecord; returns 'name:version'."""
  import tensorflow_datasets as tfds

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=47)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, path in enumerate(paths):
      yield i, {"image": path, "label": i % 47}

  builder_cls = type(name, (tfds.core.GeneratorBasedBuilder,), dict(
      name=name, VERSION=tfds.core.Version("1.0.0"), _info=_info, _split_generators=_split_generators,
      _generate_examples=_generate_examples, __module__=__name__))
  builder_cls(data_dir=data_dir).download_and_prepare(file_format="array_record")
  return f"{name}:1.0.0"


def _config(task: str, threads: int, **dataset):
  from vit_adapt import config_lib
  c, _ = config_lib.make_config("linear", f"task={task}")
  c.model.image_size = FLAGS.image_size
  c.train.batch_size = FLAGS.batch_size
  c.eval.batch_size = FLAGS.batch_size
  # One batch of prefetch: work done ahead of the timed window (and not counted) stays small against it.
  c.dataset.update(num_threads=threads, prefetch=1, split="train800val200", eval_split="test", **dataset)
  return c


def _rate(batches, warmup_epochs: int = 0, per_epoch: int = 0) -> tuple[float, float]:
  """-> (images per wall second, images per CPU second of this process, i.e. per fully used core)."""
  it = iter(batches)
  for _ in range(1 + warmup_epochs * per_epoch):
    next(it)
  wall, cpu = time.perf_counter(), time.process_time()
  n = 0
  for _ in range(FLAGS.batches):
    n += len(next(it)["label"])
  return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def _bare_rate(paths: list[str]) -> tuple[float, float]:
  from vit_adapt.data import images
  wall, cpu = time.perf_counter(), time.process_time()
  for p in paths[:128]:
    images.resize(images.decode(p), FLAGS.image_size)
  n = min(128, len(paths))
  return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def main(argv):
  del argv
  from vit_adapt.data import pipeline
  from vit_adapt.data import datasets

  root = tempfile.mkdtemp(prefix="vit_adapt_input_")
  rows = []
  for label, hw in SHAPES.items():
    task_name = f"bench/jpeg_{label}"
    folder = os.path.join(root, task_name.replace("/", "_"))
    rels = _make_images(folder, FLAGS.num_images, hw)
    _write_lists(folder, rels)
    paths = [os.path.join(folder, r) for r in rels]
    tfds_name = _tfds_dataset(os.path.join(root, "tfds"), f"bench_jpeg_{label.replace('x', '_')}", paths)
    datasets.register(datasets.Dataset(name=task_name, kind="vtab", num_classes=47, tfds_name=tfds_name,
                              splits=(("train800val200", "train"), ("test", "train")), folder=None))
    label = f"{label} JPEG, {np.mean([os.path.getsize(p) for p in paths]) / 1024:.0f} KB"
    rows.append((label, "-", "decode+resize only (no grain)", 1, _bare_rate(paths)))
    per_epoch = FLAGS.num_images // FLAGS.batch_size
    for source, extra in (("folder", {"root": folder}), ("tfds", {"data_dir": os.path.join(root, "tfds")})):
      for threads in map(int, FLAGS.threads):
        cases = {
            "train, first epoch": (dict(cache_mb=0), 0),
            "train, cached (later epochs)": (dict(), 1),
            "train, inception crop + flip": (dict(augment="inception_crop"), 0),
        }
        for case, (opts, warm) in cases.items():
          c = _config(task_name, threads, source=source, **extra, **opts)
          it = pipeline.train_iterator(c, seed=0, process_index=0, process_count=1)
          rows.append((label, source, case, threads, _rate(it, warm, per_epoch)))
        c = _config(task_name, threads, source=source, **extra)
        passes = pipeline.eval_batches(c, process_index=0, process_count=1)
        rows.append((label, source, "eval", threads, _rate(itertools.chain.from_iterable(itertools.repeat(passes)))))

  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
             platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
  print(f"\nInput pipeline throughput, {FLAGS.image_size}x{FLAGS.image_size} float32 output, batch "
        f"{FLAGS.batch_size}, {FLAGS.num_images} images; CPU: {cpu}, {os.cpu_count()} logical cores, "
        f"load average {os.getloadavg()[0]:.1f}\n")
  print("| source images | path | measurement | threads | images/s (wall) | images per CPU-second (per core) |")
  print("|---|---|---|---|---|---|")
  for label, source, case, threads, (wall, cpu) in rows:
    print(f"| {label} | {source} | {case} | {threads} | {wall:,.0f} | {cpu:,.0f} |")


if __name__ == "__main__":
  app.run(main)
