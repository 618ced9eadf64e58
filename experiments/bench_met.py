r"""MET early-exit inference vs the full network: images/s at the same batch size, against the GMACs ratio.

  python experiments/bench_met.py                       # B/16 at 224, batch 16, budget 0.6 (about 10 min on CPU)
  python experiments/bench_met.py --variant=Ti/16 --batch=64 --budget=0.5 --batches=4

Random weights (no download): the backbone is the seeded random init; exit heads and E-adapter up-projections
get random weights so that exit confidences differ from image to image. Thresholds are calibrated
(`met_calibrate.thresholds_for_budget`) on the benchmark images themselves so that their average cost is the
requested fraction of the full network's GMACs (from the compiled per-stage costs). Then, on each batch, the
compiled full network (`inference='last'`), the dense reference (every exit runs, the first confident one is
picked: `inference='dense_select'`) and the early-exit pass (`inference='early_exit'`, work really skipped)
are timed alternately; per batch the median of `--repeats` calls counts, and images/s is over all batches.
The last column compares the speedup with the ideal one (full GMACs / average GMACs); 1.0 = the saving in
multiply-adds turns fully into wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import programs  # noqa: E402  (shared with the other benchmarks: random exits, threshold calibration)
from vit_adapt import config_lib, methods  # noqa: E402
from vit_adapt.efficiency import measure as efficiency_lib  # noqa: E402


def build(variant: str, image_size: int, num_buckets: int, seed: int = 0):
  c, _ = config_lib.make_config("met", f"seed={seed}")
  c.model.update(variant=variant, image_size=image_size)
  c.method.num_buckets = num_buckets
  model, method = methods.build_model(c)
  return model, {"params": programs.met_random_exits(methods.init_variables(model, method, c)["params"], seed)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="B/16")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--batches", type=int, default=4, help="benchmark batches (the calibration set is all of them)")
  ap.add_argument("--budget", type=float, default=0.6, help="target average GMACs as a fraction of the full net")
  ap.add_argument("--num_buckets", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--gmacs_only", action="store_true", help="print the exits' cumulative GMACs (no timing) and stop")
  args = ap.parse_args()

  model, variables = build(args.variant, args.image_size, args.num_buckets)
  costs = model.exit_gmacs
  if args.gmacs_only:  # the library's fvcore convention (dot/conv + LayerNorms), from the per-stage programs
    print(f"MET exits of {args.variant} at {args.image_size} px, cumulative GMACs per image: "
          + ", ".join(f"{c:.3f}" for c in costs))
    return
  images = jax.random.normal(jax.random.PRNGKey(7), (args.batches, args.batch, args.image_size,
                                                      args.image_size, 3))

  dense = model.clone(thresholds=(), inference="last")
  thresholds, exit_idx, avg = programs.met_thresholds(model, variables, images, args.budget)

  fns = {
      "full network": jax.jit(lambda v, x: dense.apply(v, x)[0]),
      "dense select (all exits, no skipping)": jax.jit(
          lambda v, x: model.clone(thresholds=thresholds, inference="dense_select").apply(v, x)[0]),
      "early exit (skips work)": jax.jit(
          lambda v, x: model.clone(thresholds=thresholds, inference="early_exit").apply(v, x)[0]),
  }
  compiled, compile_s = {}, {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    compiled[name] = fn.lower(variables, images[0]).compile()
    compile_s[name] = time.perf_counter() - t0
    jax.block_until_ready(compiled[name](variables, images[0]))  # warm-up

  per_batch = {name: [[] for _ in range(args.batches)] for name in compiled}
  for _ in range(args.repeats):
    for b in range(args.batches):
      for name, fn in compiled.items():  # alternate, so load changes on a shared machine hit all modes alike
        t0 = time.perf_counter()
        jax.block_until_ready(fn(variables, images[b]))
        per_batch[name][b].append(time.perf_counter() - t0)
  seconds = {name: sum(statistics.median(t) for t in ts) for name, ts in per_batch.items()}

  n = args.batch * args.batches
  full_s = seconds["full network"]
  print(f"device: {efficiency_lib.device_description()}; ViT-{args.variant} at {args.image_size} px, "
        f"exits after blocks {model.exits}, batch size {args.batch}, {args.batches} batches, "
        f"median of {args.repeats} calls per batch, {args.num_buckets} capacity buckets per stage")
  print(f"exit costs (GMACs, cumulative): {', '.join(f'{c:.3f}' for c in costs)}")
  print(f"exit shares on these images: {', '.join(f'{np.mean(exit_idx == k):.3f}' for k in range(len(costs)))}")
  print()
  print("| mode | images/s | avg GMACs/image | GMACs ratio (full/avg) | speedup vs full | speedup / GMACs ratio |"
        " compile s |")
  print("|---|---|---|---|---|---|---|")
  for name, s in seconds.items():
    g = costs[-1] if name != "early exit (skips work)" else avg
    ratio = costs[-1] / g
    print(f"| {name} | {n / s:.2f} | {g:.3f} | {ratio:.3f} | {full_s / s:.3f} | {full_s / s / ratio:.3f} | "
          f"{compile_s[name]:.1f} |")


if __name__ == "__main__":
  main()
