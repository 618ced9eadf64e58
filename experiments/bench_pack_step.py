"""The compiled training step of a pack of K runs against the trainer's own step: what packing saves per step.

  python experiments/bench_pack_step.py [--config=configs/adapter_vtab.py:demo] [--runs=8] [--rounds=20]

Trains the config for 2 steps alone (`train.loop.train_and_evaluate`) and as a pack of `--runs` runs (seeds 0..K-1,
`train.packed.train_pack`), keeps the step program each compiled (and its first arguments) and times both on
those fixed arguments in interleaved rounds, best and median: no data pipeline, no dispatch gaps, only the
program. A pack's step doing K runs' work in less than K solo steps is the part of packing that grows with the
number of steps; what a pack saves beyond that is per-run start-up and compilation, paid once
(bench_packed_sweep.py measures the whole sweep).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vit_adapt.efficiency import measure  # noqa: E402
from vit_adapt.sweep.grid import load_config  # noqa: E402
from vit_adapt.train import driver, loop, packed  # noqa: E402


class _Capture:
  """Records the first call of every `driver.CompiledStep` (its arguments copied before the step donates them)."""

  def __init__(self):
    self.calls = []
    self._original = driver.CompiledStep.__call__

  def __enter__(self):
    capture = self

    def call(step, *args):
      if not any(s is step for s, _ in capture.calls):
        capture.calls.append((step, (jax.tree.map(lambda x: x.copy(), args[0]),) + args[1:]))
      return capture._original(step, *args)
    driver.CompiledStep.__call__ = call
    return self

  def __exit__(self, *exc):
    driver.CompiledStep.__call__ = self._original


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/adapter_vtab.py:demo")
  p.add_argument("--runs", type=int, default=8)
  p.add_argument("--rounds", type=int, default=20)
  p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
  a = p.parse_args(argv)
  overrides = dict(kv.split("=", 1) for kv in a.set)
  configs = [load_config(a.config, {**overrides, "train.steps": 2, "seed": seed}) for seed in range(a.runs)]
  with tempfile.TemporaryDirectory() as tmp, _Capture() as cap:
    loop.train_and_evaluate(configs[0], os.path.join(tmp, "alone"))
    packed.train_pack(configs, [os.path.join(tmp, f"run{i}") for i in range(a.runs)], os.path.join(tmp, "pack"))
  (solo, solo_args), (pack, pack_args) = cap.calls
  programs = {"one run (the trainer's step)": (solo.compiled(*solo_args), solo_args),
              f"pack of {a.runs} runs (one step)": (pack.compiled(*pack_args), pack_args)}
  state = {n: args[0] for n, (_, args) in programs.items()}
  times = {n: [] for n in programs}
  for r in range(a.rounds + 2):  # 2 warm-up rounds
    for n, (exe, args) in programs.items():
      t0 = time.perf_counter()
      state[n], metrics = exe(state[n], *args[1:])
      jax.block_until_ready((state[n], metrics))
      if r >= 2:
        times[n].append(time.perf_counter() - t0)
  best = {n: min(t) * 1e3 for n, t in times.items()}
  med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
  solo_name, pack_name = list(programs)
  lines = [f"Training step of {a.config}, batch {configs[0].train.batch_size} per run, device "
           f"{measure.device_description()}, best (median) of {a.rounds} interleaved rounds", "",
           "| program | ms per step best (median) | ms per run-step best (median) |", "|---|---|---|",
           f"| {solo_name} | {best[solo_name]:.1f} ({med[solo_name]:.1f}) | {best[solo_name]:.1f} "
           f"({med[solo_name]:.1f}) |",
           f"| {pack_name} | {best[pack_name]:.1f} ({med[pack_name]:.1f}) | {best[pack_name] / a.runs:.1f} "
           f"({med[pack_name] / a.runs:.1f}) |", "",
           f"a pack step costs {best[pack_name] / best[solo_name]:.2f} solo steps (best; median "
           f"{med[pack_name] / med[solo_name]:.2f}) for {a.runs} runs' work"]
  text = "\n".join(lines)
  print("\n" + text)
  return text


if __name__ == "__main__":
  main()
