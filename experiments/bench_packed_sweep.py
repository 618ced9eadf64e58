r"""Packed vs one-after-another: 8 demo adapter runs (4 seeds x 2 learning rates), total wall time.

  python experiments/bench_packed_sweep.py [--steps=0] [--workdir=/tmp/bench_pack] [--out=bench_pack.json]

Both modes are the sweep command a user types, timed from start to exit (start-up, compilation, training,
evaluation, the efficiency report and every file written):

  one after another: python -m vit_adapt.sweep --config=configs/adapter_vtab.py:demo \
                         --grid='seed=[0,1,2,3];optim.lr=[1e-3,3e-3]' --devices=1 --pack=1 --workdir=W/seq
  packed:            ... --pack=8 --workdir=W/packed

On a CPU host the sweep's single slot gets every core. Then it checks that each run's top-1 is the same in both
modes and prints the largest difference of final training losses, and a Markdown table (docs/sweeps.md).
`--steps` > 0 shortens the runs (0 = the demo's 440 steps). It states the host's core count and load average:
on a machine shared with other work the times include that contention.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = "seed=[0,1,2,3];optim.lr=[1e-3,3e-3]"


def run_sweep(workdir: str, pack: int, steps: int) -> float:
  cmd = [sys.executable, "-m", "vit_adapt.sweep", "--config=configs/adapter_vtab.py:demo", f"--grid={GRID}",
         "--devices=1", f"--pack={pack}", f"--workdir={workdir}", "--progress_every_s=600",
         # A fresh compilation cache per mode: both start cold (no program from an earlier benchmark), and
         # each reuses what its own runs or packs compiled, as a user's sweep does.
         f"--compilation_cache={workdir}_compilation_cache"]
  if steps:
    cmd.append(f"--overrides=train.steps={steps}")
  t0 = time.time()
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  wall = time.time() - t0
  if done.returncode:
    sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
  return wall


def collect(workdir: str) -> dict:
  out = {}
  for dirpath, _, files in os.walk(workdir):
    if "results.json" in files and "_packs" not in dirpath:
      with open(os.path.join(dirpath, "results.json")) as f:
        r = json.load(f)
      out[os.path.relpath(dirpath, workdir)] = r
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=0)
  p.add_argument("--workdir", default="/tmp/bench_pack")
  p.add_argument("--out", default="")
  a = p.parse_args()
  shutil.rmtree(a.workdir, ignore_errors=True)
  load_before = os.getloadavg()
  times = {"one after another": run_sweep(os.path.join(a.workdir, "seq"), 1, a.steps),
           "packed (--pack=8)": run_sweep(os.path.join(a.workdir, "packed"), 8, a.steps)}
  load_after = os.getloadavg()
  seq, packed = collect(os.path.join(a.workdir, "seq")), collect(os.path.join(a.workdir, "packed"))
  assert len(seq) == len(packed) == 8 and seq.keys() == packed.keys(), (sorted(seq), sorted(packed))
  same_top1 = all(seq[k]["top1"] == packed[k]["top1"] for k in seq)
  max_dloss = max(abs(seq[k]["final_train_loss"] - packed[k]["final_train_loss"]) for k in seq)
  top1 = sorted(round(100 * r["top1"], 1) for r in packed.values())
  record = dict(runs=8, steps=seq[next(iter(seq))]["steps"], cores=os.cpu_count(), machine=platform.processor()
                or platform.machine(), load_avg_before=load_before, load_avg_after=load_after,
                wall_s={k: round(v, 1) for k, v in times.items()},
                speedup=round(times["one after another"] / times["packed (--pack=8)"], 2),
                same_top1=same_top1, max_final_loss_difference=max_dloss, top1_percent=top1)
  print(json.dumps(record, indent=1))
  print(f"\n8 demo adapter runs ({GRID}), {record['steps']} steps each, {os.cpu_count()} CPU cores "
        f"(load average {load_before[0]:.1f} before, {load_after[0]:.1f} after)\n")
  print("| mode | total wall time | per run |")
  print("|---|---|---|")
  for k, v in times.items():
    print(f"| {k} | {v:.0f} s | {v / 8:.1f} s |")
  print(f"\nspeed-up {record['speedup']}x; top-1 identical in both modes: {same_top1}; largest final-loss "
        f"difference {max_dloss:.2e}")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  main()
