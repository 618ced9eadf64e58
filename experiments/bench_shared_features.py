r"""Speed-up of frozen-feature sharing for a linear-probe sweep: separate trainer runs vs one shared group.

  python experiments/bench_shared_features.py [--variant=Ti/16 --image_size=64 --depth=12 --epochs=10 \
      --lrs=0.01,0.003,0.001 --seeds=0,1]

Both sides train the same runs (the product of --lrs and --seeds) on the embedded digits (`demo/digits`,
1437 training and 360 test images, no download) with a fixed random backbone saved once (a stand-in for a
pre-trained checkpoint: the cost does not depend on the weights):

  separate   `vit_adapt.train.loop.train_and_evaluate` once per run, one after the other (what a sweep does when
             every run is its own job, minus process start-up)
  shared     `vit_adapt.shared_features.train_group` on all runs: features once, heads trained together

It prints one Markdown table (device, batch size, model, runs, wall seconds, speed-up) and checks that both
sides report the same top-1 for every run. Throughput measurement is off on both sides (it is identical work).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--variant", default="Ti/16")
  ap.add_argument("--image_size", type=int, default=64)
  ap.add_argument("--depth", type=int, default=12)
  ap.add_argument("--epochs", type=float, default=10)
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--lrs", default="0.01,0.003,0.001")
  ap.add_argument("--seeds", default="0,1")
  ap.add_argument("--workdir", default="")
  args = ap.parse_args()
  os.chdir(ROOT)

  import jax
  from vit_adapt import methods
  from vit_adapt.efficiency import measure as efficiency_lib
  from vit_adapt.sweep import shared_features
  from vit_adapt import train

  work = args.workdir or tempfile.mkdtemp(prefix="bench_shared_")
  config_arg = "configs/linear_vtab.py:demo"
  base = {"model.variant": args.variant, "model.image_size": args.image_size, "model.depth": args.depth,
          "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.checkpoint_every_steps": 0,
          "train.eval_every_epochs": 0, "efficiency.enabled": False}
  backbone = os.path.join(work, "backbone")
  if not os.path.isdir(backbone):
    c = shared_features.load_config(config_arg, base)
    model, method = methods.build_model(c)
    methods.save_model_dir(backbone, c, dict(methods.init_variables(model, method, c)))
  base["model.init"] = backbone
  points = [{"optim.lr": float(lr), "seed": int(s)} for lr in args.lrs.split(",") for s in args.seeds.split(",")]
  specs = [{"name": f"run{i}", "config": config_arg, "overrides": {**base, **p},
            "workdir": os.path.join(work, "shared", f"run{i}")} for i, p in enumerate(points)]

  t0 = time.perf_counter()
  shared = shared_features.train_group(specs, os.path.join(work, "shared", "_group"))
  t_shared = time.perf_counter() - t0
  feature_s = shared[0]["shared_features"]["feature_time_s"]

  t0 = time.perf_counter()
  separate = []
  for i, s in enumerate(specs):
    config = shared_features.load_config(s["config"], s["overrides"])
    separate.append(train.train_and_evaluate(config, os.path.join(work, "separate", f"run{i}")))
  t_separate = time.perf_counter() - t0

  same = all(a["top1"] == b["top1"] for a, b in zip(shared, separate))
  steps = separate[0]["steps"]
  print(f"\nDevice: {efficiency_lib.device_description()}; ViT {args.variant} depth {args.depth} at "
        f"{args.image_size} px, linear probe on demo/digits ({separate[0]['num_train_examples']} train / "
        f"{separate[0]['num_eval_examples']} test images), batch {args.batch_size}, {steps} steps per run, "
        f"JAX {jax.__version__}.\n")
  print("| runs (lr x seed) | separate runs (s) | shared features (s) | of which features (s) | speed-up | "
        "same top-1 |")
  print("|---|---|---|---|---|---|")
  print(f"| {len(specs)} ({args.lrs} x {args.seeds}) | {t_separate:.1f} | {t_shared:.1f} | {feature_s:.1f} | "
        f"{t_separate / t_shared:.1f}x | {'yes' if same else 'NO'} |")
  for a, b, p in zip(shared, separate, points):
    print(f"  {p}: top1 shared {a['top1']:.4f} separate {b['top1']:.4f}")
  if not args.workdir:
    shutil.rmtree(work, ignore_errors=True)
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
