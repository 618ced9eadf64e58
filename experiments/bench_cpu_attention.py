"""The CPU attention op at several group budgets: how `vit.CPU_ATTENTION_GROUP_BYTES` was chosen.

  python experiments/bench_cpu_attention.py [--shapes=8x197,1x1025] [--budgets_mib=0,1,2,4,8,16,64] [--rounds=9]

For each shape (images x tokens, 12 heads of 64, ViT-B) it times `vit.cpu_attention` (the op the model's attention
runs on the CPU: (image, head) pairs in groups of at most `budget` of float32 logits, one group at a time) with
each budget, and the ungrouped op (budget 0 here: every pair at once, what XLA's `jax.nn.dot_product_attention`
computes), in interleaved rounds, best and median, and the largest difference to the ungrouped result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vit_adapt.efficiency import measure  # noqa: E402
from vit_adapt.models import vit  # noqa: E402


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shapes", default="8x197,1x1025", help="IMAGESxTOKENS,...")
  p.add_argument("--budgets_mib", default="0,1,2,4,8,16,64", help="0 = ungrouped")
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--rounds", type=int, default=9)
  a = p.parse_args(argv)
  budgets = [float(b) for b in a.budgets_mib.split(",")]
  lines = [f"CPU attention, {a.heads} heads of {a.head_dim}, float32, device {measure.device_description()}, best "
           f"(median) of {a.rounds} interleaved rounds; default budget "
           f"{vit.CPU_ATTENTION_GROUP_BYTES / 2**20:g} MiB", "",
           "| images x tokens | logits budget (MiB) | group (pairs) | ms best (median) | vs ungrouped best (median) "
           "| max abs diff |", "|---|---|---|---|---|---|"]
  for shape in a.shapes.split(","):
    b, n = (int(v) for v in shape.split("x"))
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (b, n, a.heads, a.head_dim)) for i in range(3))
    pairs, logits = b * a.heads, n * n * 4
    fns = {}
    for mib in budgets:
      budget = int(mib * 2**20) if mib else pairs * logits  # everything in one group: no loop
      fns[mib] = jax.jit(lambda q, k, v, budget=budget: vit.cpu_attention(q, k, v, budget)).lower(q, k, v).compile()
    reference = np.asarray(fns[budgets[0]](q, k, v)) if budgets[0] == 0 else None
    times = {m: [] for m in fns}
    for _ in range(a.rounds + 1):  # the first round warms up
      for m, f in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(q, k, v))
        times[m].append(time.perf_counter() - t0)
    base = times[budgets[0]][1:]
    for m, t in times.items():
      t = t[1:]
      group = max(g for g in range(1, pairs + 1) if pairs % g == 0
                  and (g * logits <= (m * 2**20 if m else pairs * logits) or g == 1))
      diff = "-" if reference is None else f"{float(np.abs(np.asarray(fns[m](q, k, v)) - reference).max()):.1e}"
      lines.append(f"| {b} x {n} | {m:g}{' (ungrouped)' if not m else ''} | {group} | {min(t) * 1e3:.2f} "
                   f"({statistics.median(t) * 1e3:.2f}) | {min(base) / min(t):.2f}x "
                   f"({statistics.median(base) / statistics.median(t):.2f}x) | {diff} |")
  text = "\n".join(lines)
  print("\n" + text)
  return text


if __name__ == "__main__":
  main()
