"""Train, evaluate and report one experiment:

  python -m vit_adapt.main --config=configs/adapter_vtab.py:task=vtab/dtd --workdir=runs/adapter_dtd

Re-running the same command resumes from the latest checkpoint in --workdir; a workdir holding a run of another
config is refused (--restart moves it aside). Results: WORKDIR/results.json.
"""

import json

from absl import flags
from ml_collections import config_flags

from vit_adapt import cli
from vit_adapt.cli import compile_cache
from vit_adapt.errors import UserError

config_flags.DEFINE_config_file("config", None, "Experiment config: configs/<method>_vtab.py[:key=value,...].")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.json (resumes if it has some).")
flags.DEFINE_bool("restart", False, "If --workdir holds a run of another config, move it aside (to "
                  "WORKDIR.replaced-<time>) and start afresh instead of stopping.")
compile_cache.define_flag()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; use --config=... --workdir=...")
  if FLAGS.config is None or not FLAGS.workdir:
    raise UserError("both --config and --workdir are required, e.g. "
                    "--config=configs/adapter_vtab.py:demo --workdir=runs/demo")
  compile_cache.enable(FLAGS.compilation_cache)
  from vit_adapt import train  # after flag parsing: keeps `--help` fast
  results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir, restart=FLAGS.restart)
  keys = ("task", "method", "top1", "trainable_params", "gmacs_per_image", "throughput_images_per_s",
          "peak_train_memory_bytes", "wall_time_s")
  summary = {k: results.get(k) for k in keys}
  # Fields a task adds beside them (video: top-5, GMACs per view and per video, clips/s, skipped videos).
  summary.update({k: results[k] for k in ("top5", "gmacs_per_view", "gmacs_per_video", "views_per_video",
                                          "throughput_clips_per_s", "num_skipped_videos",
                                          "num_skipped_train_videos") if k in results})
  primary = results.get("primary_metric", "top1")  # the task's metric (mIoU for segmentation) replaces top-1
  if primary != "top1":
    summary = {(primary if k == "top1" else k): results.get(primary if k == "top1" else k) for k in summary}
  # The method's own evaluation statistics (DyT's activation_rate, MET's mean exit, ...) belong in the summary.
  summary.update({k: results[k] for k in results.get("method_stats", ()) if k in results})
  print(json.dumps(summary))


if __name__ == "__main__":
  cli.run(main)
