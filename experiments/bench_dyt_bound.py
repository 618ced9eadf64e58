"""The most DyT `threshold` can gain over the dense ViT with this backend's kernels: one block's parts, timed.

  python experiments/bench_dyt_bound.py [--variant=B/16] [--image_size=224] [--batch=8] [--rate=0.5] [--rounds=15]

DyT skips only the MLP of inactive tokens; the attention branch, the router and the adapter run on every token.
This times, on random weights in interleaved rounds (best and median), the parts of one block of the backbone as
the library's own modules compute them:

  attention branch   LN0 + q/k/v + the attention op the model runs (vit.fused_attention) + output projection
  MLP, every row     LN1 + MLP on all B x N rows (the dense block)
  MLP, active rows   LN1 + MLP on a static slice of 1 + rate x (N - 1) rows per image: a dispatch that costs
                     nothing (no gathers, scatters, branches or padding), the ideal of `threshold`
  router + adapter   DyT's additions on every row (linear D -> 1, bottleneck adapter)

and prints the bound: (attention + MLP every row) / (attention + MLP active rows + router + adapter), the
speed-up DyT would have with a free dispatch and the same kernels (the patch embedding and the head, the same in
both, are left out: they only lower the ratio), next to the GMACs ratio of the same parts. When the bound is under
a target, no dispatch can reach it on this backend: the kernels (attention above all) are the limit.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import flax.linen as nn
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vit_adapt.efficiency import measure  # noqa: E402
from vit_adapt.models import vit  # noqa: E402
from vit_adapt.models.adapters import Adapter  # noqa: E402


def parts(shape: vit.ViTShape, batch: int, tokens: int, active_rows: int):
  """-> {name: (fn(params, x), params, x)} for one block."""
  block = vit.Encoder1DBlock(mlp_dim=shape.mlp_dim, num_heads=shape.num_heads, width=shape.width)
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (batch, tokens, shape.width))
  bp = block.init(key, x)
  router, adapter = nn.Dense(1), Adapter(bottleneck=64, out_dim=shape.width)
  rows = x.reshape(-1, shape.width)
  rp, ap = router.init(key, rows), adapter.init(key, rows)

  def attention(p, x):
    return x + block.apply(p, x, method=vit.Encoder1DBlock.attention_branch)

  def mlp(p, rows):
    return block.apply(p, rows, method=lambda m, r: m.MlpBlock_0(m.LayerNorm_1(r)))

  def extras(p, rows):
    return router.apply(p[0], rows), adapter.apply(p[1], rows)

  return {"attention branch": (attention, bp, x), "MLP, every row": (mlp, bp, rows),
          "MLP, active rows": (mlp, bp, rows[:active_rows]), "router + adapter": (extras, (rp, ap), rows)}


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variant", default="B/16")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--rate", type=float, default=0.5)
  p.add_argument("--rounds", type=int, default=15)
  a = p.parse_args(argv)
  shape = vit.decode_variant(a.variant)
  tokens = 1 + (a.image_size // shape.patch_size) ** 2
  active_rows = a.batch * (1 + math.ceil(a.rate * (tokens - 1)))
  fns = parts(shape, a.batch, tokens, active_rows)
  compiled = {n: jax.jit(f).lower(prm, x).compile() for n, (f, prm, x) in fns.items()}
  gmacs = {n: measure.lowered_macs(f, prm, x) / 1e9 for n, (f, prm, x) in fns.items()}
  times = {n: [] for n in fns}
  for _ in range(a.rounds):
    for n, (_, prm, x) in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(compiled[n](prm, x))
      times[n].append(time.perf_counter() - t0)
  best = {n: min(t) * 1e3 for n, t in times.items()}
  med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
  lines = [f"One {a.variant} block at {a.image_size}px ({tokens} tokens), batch {a.batch}, float32, device "
           f"{measure.device_description()}, best (median) of {a.rounds} interleaved rounds; active rows = "
           f"{active_rows} of {a.batch * tokens} (rate {a.rate})", "",
           "| part | GMACs | ms best (median) | ms per GMAC (best) |", "|---|---|---|---|"]
  lines += [f"| {n} | {gmacs[n]:.4f} | {best[n]:.2f} ({med[n]:.2f}) | {best[n] / gmacs[n]:.1f} |" for n in fns]

  def bound(t):
    return (t["attention branch"] + t["MLP, every row"]) / (
        t["attention branch"] + t["MLP, active rows"] + t["router + adapter"])
  ratio = bound(gmacs)
  lines += ["", f"GMACs ratio of the block (dense / DyT): {ratio:.3f} (0.9 x = {0.9 * ratio:.3f})",
            f"bound on DyT's speed-up with a free dispatch: {bound(best):.3f} best, {bound(med):.3f} median "
            f"({bound(best) / ratio:.2f} of the GMACs ratio)"]
  # What the attention's kernels cost the bound: the same with the attention branch at the MLP's time per GMAC.
  at_mlp_rate = dict(best, **{"attention branch": gmacs["attention branch"] * best["MLP, every row"]
                              / gmacs["MLP, every row"]})
  lines.append(f"the same with the attention branch at the MLP's ms per GMAC: {bound(at_mlp_rate):.3f}")
  text = "\n".join(lines)
  print("\n" + text)
  return text

if __name__ == "__main__":
  main()
