"""Segmentation backbone benchmark: DyT at `rate` activation vs the dense ViT, both under the same UperNet head.

  python experiments/bench_segmentation.py [--variant=B/16] [--image_size=512] [--depth=12] [--batch=1]
      [--rounds=5] [--rate=0.5] [--modes=capacity,threshold] [--head_channels=768]

The models are configs/dyt_ade20k.py's (ViT at 512 px, blocks 4/6/8/12 -> BEiT pyramid -> UperNet + FCN, 150
classes) with random weights: DyT (its routers' per-layer biases calibrated on the benchmark batch so that `rate`
of the patch tokens are active in every layer: experiments/programs.py's `calibrate_router_bias`, as the
classification benchmarks do) and the plain ViT (the `linear` method, DyT's weights without routers and adapters)
under the same head. What is timed is the backbone (patch embedding + the blocks), one window of `image_size`
px: the head is the same program for both, its cost is reported beside. Each program is compiled ahead of time
and warmed up, then the modes are timed in interleaved rounds (background load hits them alike); the table gives
the best round (timeit's estimator; drives the check) and the median, and the speed-up of each round over the
dense round next to it (the median of those same-round ratios).

GMACs (fvcore convention, vit_adapt.efficiency.measure.lowered_gmacs: the count of the lowered program, the same
on every backend): backbone = the backbone program, head = one window's whole program minus its backbone. DyT
`capacity` (top-k tokens per image) has a static program whose count is exact; `threshold` compiles every bucket
branch, so its backbone GMACs are DyT's own per-image count (`out['gmacs']`, the method's formula on the tokens
actually dispatched). The check printed at the end: backbone speed-up >= 0.9 x dense GMACs / DyT GMACs.
`--variant=Ti/16 --image_size=64 --depth=4 --rounds=1 --head_channels=32` is a quick check (tests/test_bench_scripts.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from programs import calibrate_router_bias, perturb_trainable  # noqa: E402  (shared with the other benchmarks)
from vit_adapt import config_lib, methods  # noqa: E402
from vit_adapt.efficiency import measure  # noqa: E402
from vit_adapt.methods import base  # noqa: E402
from vit_adapt.tasks import segmentation_recipe  # noqa: E402

DENSE = "dense ViT"


def feature_blocks(depth: int) -> tuple[int, ...]:
  """The recipe's blocks 4/6/8/12 at depth 12; elsewhere 4 evenly spaced blocks ending with the last."""
  if depth == 12:
    return (3, 5, 7, 11)
  if depth < 4:
    raise SystemExit(f"--depth={depth}: the pyramid needs 4 blocks; give --depth >= 4.")
  return tuple(round(depth * k / 4) - 1 for k in (1, 2, 3, 4))


def seg_config(method: str, a, **fields):
  """configs/*_ade20k.py's recipe for `method` at the benchmark's size, random init."""
  c, _ = config_lib.make_config(method, f"task={segmentation_recipe.dataset_name('ade20k')}")
  segmentation_recipe.apply(c, "ade20k")
  c.model.update(variant=a.variant, image_size=a.image_size, depth=a.depth, init="", dtype="float32",
                 drop_path=0.0, feature_blocks=feature_blocks(a.depth))
  c.model.head_channels = a.head_channels
  c.method.update(fields)
  return c


def _encode(module, images):
  return module.encode(module.embed(images), False)


class BackboneOnly:
  """`model.apply` restricted to the backbone ((tokens, out) of its blocks): router calibration without running
  the head, which at 512 px costs more than the backbone."""

  def __init__(self, model):
    self.model = model

  def apply(self, variables, images):
    return self.model.apply(variables, images, method=_encode)


def backbone_fn(model):
  """(variables, images) -> the last block's tokens (every block runs: the pyramid reads 4 of them)."""
  return lambda v, x: BackboneOnly(model).apply(v, x)[0]


def window_fn(model):
  return lambda v, x: model.apply(v, x, train=False)[0]


def strip_dyt(params):
  """DyT's parameters without routers and adapters: the dense ViT's (same backbone, same head)."""
  return {**params, "Transformer": {k: ({n: w for n, w in v.items() if n not in ("router", "adapter")}
                                        if k.startswith("encoderblock_") else v)
                                    for k, v in params["Transformer"].items()}}


def build(a):
  """-> ({mode: (model, variables)}, images, head GMACs, {mode: backbone GMACs}, {mode: activation})."""
  dyt_cfg = seg_config("dyt", a, complete_pass=False, bottleneck=64, scale=0.1)
  masked, method = methods.build_model(base.with_method_fields(dyt_cfg, inference="masked"))
  variables = dict(methods.init_variables(masked, method, dyt_cfg, load_backbone=False))
  variables["params"] = perturb_trainable(variables["params"], method)
  x = jax.random.uniform(jax.random.PRNGKey(7), (a.batch, a.image_size, a.image_size, 3), jnp.float32, -1, 1)
  variables["params"] = calibrate_router_bias(BackboneOnly(masked), variables["params"], x, a.rate)

  dense_model, _ = methods.build_model(seg_config("linear", a))
  modes = {DENSE: (dense_model, {**variables, "params": strip_dyt(variables["params"])})}
  for mode in a.modes:
    model, _ = methods.build_model(base.with_method_fields(dyt_cfg, inference=mode, capacity_rate=a.rate))
    modes[f"DyT {mode}"] = (model, variables)

  one = x[:1]
  head = (measure.lowered_gmacs(window_fn(dense_model), modes[DENSE][1], one)
          - measure.lowered_gmacs(backbone_fn(dense_model), modes[DENSE][1], one))
  gmacs, activation = {}, {DENSE: 1.0}
  for name, (model, v) in modes.items():
    gmacs[name] = measure.lowered_gmacs(backbone_fn(model), v, one)
    if name != DENSE:  # the backbone's own statistics on the batch (no head: it is the costly part at 512 px)
      out = jax.jit(lambda v, y, m=model: BackboneOnly(m).apply(v, y)[1])(v, x)
      activation[name] = float(jnp.mean(out["activation_rate"]))
      if name == "DyT threshold":  # every bucket branch is in the program: the method's own count
        gmacs[name] = float(jnp.mean(out["gmacs"]))
  return modes, x, head, gmacs, activation


def time_rounds(modes, x, rounds: int) -> dict[str, list[float]]:
  compiled = {}
  for name, (model, v) in modes.items():
    t0 = time.perf_counter()
    compiled[name] = jax.jit(backbone_fn(model)).lower(v, x).compile()
    print(f"compiled {name} in {time.perf_counter() - t0:.0f}s", flush=True)
    jax.block_until_ready(compiled[name](v, x))  # warm-up
  times = {n: [] for n in modes}
  for _ in range(rounds):
    for name, c in compiled.items():
      t0 = time.perf_counter()
      jax.block_until_ready(c(modes[name][1], x))
      times[name].append(time.perf_counter() - t0)
  return times


def table(a, head, gmacs, activation, times) -> tuple[str, bool]:
  ips = {n: a.batch / min(t) for n, t in times.items()}
  ips_med = {n: a.batch / statistics.median(t) for n, t in times.items()}
  lines = ["| backbone | activation | backbone GMACs | head GMACs | head share | backbone images/s best (median) "
           "| speed-up best (same-round median) | target 0.9 x GMACs ratio |",
           "|---|---|---|---|---|---|---|---|"]
  ok = True
  for n in times:
    share = head / (head + gmacs[n])
    same_round = statistics.median(d / t for d, t in zip(times[DENSE], times[n]))
    ratio = gmacs[DENSE] / gmacs[n]
    target = "-"
    if n != DENSE:
      met = ips[n] / ips[DENSE] >= 0.9 * ratio
      ok &= met
      target = f"{0.9 * ratio:.2f}x " + ("met" if met else "NOT met")
    lines.append(f"| {n} | {activation[n]:.3f} | {gmacs[n]:.4g} | {head:.4g} | {share:.0%} | {ips[n]:.2f} "
                 f"({ips_med[n]:.2f}) | {ips[n] / ips[DENSE]:.2f}x ({same_round:.2f}x) | {target} |")
  return "\n".join(lines), ok


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variant", default="B/16")
  p.add_argument("--image_size", type=int, default=512)
  p.add_argument("--depth", type=int, default=12)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--head_channels", type=int, default=768, help="UperNet channels (the recipe's 768)")
  p.add_argument("--rate", type=float, default=0.5)
  p.add_argument("--modes", default="capacity,threshold", help="DyT inference modes to time (comma-separated)")
  a = p.parse_args(argv)
  a.modes = [m for m in a.modes.split(",") if m]

  t0 = time.perf_counter()
  modes, x, head, gmacs, activation = build(a)
  print(f"built and counted in {time.perf_counter() - t0:.0f}s", flush=True)
  times = time_rounds(modes, x, a.rounds)
  text, ok = table(a, head, gmacs, activation, times)
  print(f"\nSegmentation backbone benchmark: {a.variant} ({a.depth} blocks) at {a.image_size}px, batch {a.batch}, "
        f"float32, device {measure.device_description()}, best (median) of {a.rounds} interleaved rounds, "
        f"routers calibrated to {a.rate:.2f} active; GMACs per {a.image_size}px window\n")
  print(text)
  print(f"\nall targets met: {ok}")
  return text


if __name__ == "__main__":
  main()
