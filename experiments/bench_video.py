r"""Video inference: DyT at 50 % activation on the 8-frame per-frame ViT-B/16 clip and Sparse-Tuning at keep 0.7 on
the 16-frame VideoMAE ViT-B clip, each against its dense model; one run, rows interleaved.

  python experiments/bench_video.py [--batch_size=1] [--repeats=5] [--image_size=224] [--variant=B/16]
                                    [--models=frames,tubelet]

Random weights (speed does not depend on their values; DyT runs its `capacity` inference at rate 0.5, i.e. exactly
half of each frame's patch tokens through the MLPs, which is what 50 % activation computes). Per row: GMACs per
view counted from the compiled inference program (`vit_adapt.efficiency.measure`), the median time of `repeats`
timed calls of the ahead-of-time compiled program at the stated batch (views per call), rounds interleaved so a
load change on a shared machine hits every row alike. Columns: speed-up over the row's dense model, its GMACs
ratio, and speed-up / GMACs ratio (the issue's bar: >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from vit_adapt import config_lib, methods
from vit_adapt.efficiency import measure

# (row, dense row it is compared with, method, video model, frames, method fields)
ROWS = (
    ("frames dense (8 frames)", None, "linear", "frames", 8, {}),
    ("DyT 50% (capacity 0.5)", "frames dense (8 frames)", "dyt", "frames", 8,
     dict(inference="capacity", capacity_rate=0.5)),
    ("tubelet dense (16 frames)", None, "linear", "tubelet", 16, {}),
    ("Sparse-Tuning keep 0.7", "tubelet dense (16 frames)", "sparse_tuning", "tubelet", 16,
     dict(keep_rate=0.7, token_score="mean_attention")),
)


def build(method, kind, frames, fields, args):
  c, _ = config_lib.make_video_config(method, "task=k400", video_model=kind)
  c.model.update(variant=args.variant, image_size=args.image_size, init="")
  c.video.num_frames = frames
  c.method.update(fields)
  model, m = methods.build_model(c)
  variables = methods.init_variables(model, m, c, load_backbone=False)
  x = jax.random.uniform(jax.random.PRNGKey(1), (args.batch_size, frames, args.image_size, args.image_size, 3),
                         minval=-1, maxval=1)
  fn = lambda v, x: model.apply(v, x, train=False)[0]
  gmacs = measure.lowered_gmacs(fn, variables, x[:1])
  compiled = jax.jit(fn).lower(variables, x).compile()
  return gmacs, lambda: jax.block_until_ready(compiled(variables, x))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch_size", type=int, default=1)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--variant", default="B/16")
  p.add_argument("--models", default="frames,tubelet", help="which pairs: frames (DyT), tubelet (Sparse-Tuning)")
  args = p.parse_args()
  rows = [r for r in ROWS if r[3] in args.models.split(",")]
  built = {name: build(method, kind, frames, fields, args) for name, _, method, kind, frames, fields in rows}
  times = {name: [] for name in built}
  for _ in range(2):  # warm-up
    for _, run in built.values():
      run()
  for _ in range(args.repeats):
    for name, (_, run) in built.items():
      t0 = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - t0)
  print(f"device: {measure.device_description()}, batch {args.batch_size} view(s) per call, "
        f"{args.repeats} interleaved repeats")
  print("| model | GMACs/view | s/call | speed-up | GMACs ratio | speed-up / ratio |\n|---|---|---|---|---|---|")
  for name, dense, *_ in rows:
    g, t = built[name][0], statistics.median(times[name])
    if dense is None:
      print(f"| {name} | {g:.2f} | {t:.3f} | 1.00 | 1.00 | - |")
    else:
      speed = statistics.median(times[dense]) / t
      ratio = built[dense][0] / g
      print(f"| {name} | {g:.2f} | {t:.3f} | {speed:.2f} | {ratio:.2f} | {speed / ratio:.2f} |")


if __name__ == "__main__":
  main()
