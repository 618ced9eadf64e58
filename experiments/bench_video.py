r"""Video inference: DyT at 50 % activation on the 8-frame per-frame ViT-B/16 clip and Sparse-Tuning at keep 0.7 on
the 16-frame VideoMAE ViT-B clip, each against its dense model; one run, rows interleaved.

  python experiments/bench_video.py [--batch_size=1] [--repeats=5] [--image_size=224] [--variant=B/16]
                                    [--models=frames,tubelet] [--depth=0] [--dyt_frames=8] [--tubelet_frames=16]

Random weights (speed does not depend on their values; DyT runs its `capacity` inference at rate 0.5, i.e. exactly
half of each frame's patch tokens through the MLPs, which is what 50 % activation computes). Per row: GMACs per
view counted from the compiled inference program (`vit_adapt.efficiency.measure`) and the median time of
`repeats` timed calls of the ahead-of-time compiled program at the stated batch (views per call).

Both sides of a comparison are timed in the same rounds: each round times every row once (in reverse order
every other round, so neither side always runs first), and a row's speed-up is the median over rounds of
dense time / row time within the round, so a load change on a shared machine cancels out instead of landing on
one side. Columns: speed-up over the row's dense model, its GMACs ratio (dense / row), speed-up / GMACs ratio
and whether that meets the issue's bar (>= 0.9). `--depth`, `--image_size`, `--variant` and the frame counts
shrink the models for a quick check of the script; the issue's setting is the default.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from vit_adapt import config_lib, methods
from vit_adapt.efficiency import measure

BAR = 0.9  # the bar: wall-clock speed-up >= 0.9 x the GMACs ratio

# (row, dense row it is compared with, method, video model, method fields); frames: --dyt_frames/--tubelet_frames
ROWS = (
    ("frames dense", None, "linear", "frames", {}),
    ("DyT 50% (capacity 0.5)", "frames dense", "dyt", "frames", dict(inference="capacity", capacity_rate=0.5)),
    ("tubelet dense", None, "linear", "tubelet", {}),
    ("Sparse-Tuning keep 0.7", "tubelet dense", "sparse_tuning", "tubelet",
     dict(keep_rate=0.7, token_score="mean_attention")),
)


def build(method, kind, frames, fields, args):
  c, _ = config_lib.make_video_config(method, "task=k400", video_model=kind)
  c.model.update(variant=args.variant, image_size=args.image_size, init="")
  if args.depth:
    c.model.depth = args.depth
    if "sparse_blocks" in c.method:  # the sparsified blocks must exist: spread them over the shallower model
      c.method.sparse_blocks = tuple(sorted({max(1, args.depth * k // 4) for k in (1, 2, 3)} - {args.depth}))
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
  p.add_argument("--depth", type=int, default=0, help="blocks (0: the variant's); for a quick check only")
  p.add_argument("--dyt_frames", type=int, default=8)
  p.add_argument("--tubelet_frames", type=int, default=16)
  args = p.parse_args()
  frames = {"frames": args.dyt_frames, "tubelet": args.tubelet_frames}
  rows = [r for r in ROWS if r[3] in args.models.split(",")]
  built = {name: build(method, kind, frames[kind], fields, args) for name, _, method, kind, fields in rows}
  names = list(built)
  times = {name: [] for name in names}
  for _ in range(2):  # warm-up
    for _, run in built.values():
      run()
  for r in range(args.repeats):
    for name in (names if r % 2 == 0 else names[::-1]):
      t0 = time.perf_counter()
      built[name][1]()
      times[name].append(time.perf_counter() - t0)
  print(f"device: {measure.device_description()}, batch {args.batch_size} view(s) per call, {args.repeats} "
        f"interleaved rounds; {args.variant} at {args.image_size} px"
        f"{f', {args.depth} blocks' if args.depth else ''}; frames: DyT {args.dyt_frames}, tubelet "
        f"{args.tubelet_frames}")
  print("| model | GMACs/view | s/call | speed-up | GMACs ratio | speed-up / ratio | >= 0.9 |\n"
        "|---|---|---|---|---|---|---|")
  for name, dense, _, kind, _ in rows:
    g, t = built[name][0], statistics.median(times[name])
    if dense is None:
      print(f"| {name} ({frames[kind]} frames) | {g:.4g} | {t:.4g} | 1.00 | 1.00 | - | - |")
      continue
    # Per round: both sides measured under the same load; the median of those ratios.
    speed = statistics.median(d / m for d, m in zip(times[dense], times[name]))
    ratio = built[dense][0] / g
    print(f"| {name} | {g:.4g} | {t:.4g} | {speed:.2f} | {ratio:.2f} | {speed / ratio:.2f} | "
          f"{'yes' if speed / ratio >= BAR else 'no'} |")


if __name__ == "__main__":
  main()
