"""Reproduces README.md's demo table: each baseline's `:demo` config through the real CLI, one fresh process each.

  python experiments/demo_table.py [--methods=adapter,full,lora,vpt,linear] [--workdir=/tmp/demo_table]

Prints a Markdown table: test top-1, trainable parameters, GMACs per image, CPU time (user + system of the child
process, all cores) and wall time, with the device and the batch sizes. Workdirs are recreated, so nothing resumes.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(method: str, workdir: str) -> dict:
  shutil.rmtree(workdir, ignore_errors=True)
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.time()
  subprocess.run([sys.executable, "-m", "vit_adapt.main", f"--config=configs/{method}_vtab.py:demo",
                  f"--workdir={workdir}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wall = time.time() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  with open(os.path.join(workdir, "results.json")) as f:
    r = json.load(f)
  r["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  r["process_wall_s"] = wall
  return r


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--methods", default="adapter,full,lora,vpt,linear")
  parser.add_argument("--workdir", default="/tmp/demo_table")
  args = parser.parse_args()
  rows = [run(m, os.path.join(args.workdir, m)) for m in args.methods.split(",")]
  r0 = rows[0]
  print(f"device: {r0['device']}, {os.cpu_count()} CPU cores visible; {r0['dtype']}, training batch "
        f"{r0['train_batch_size']}, throughput batch {r0['batch_size']}")
  print("| config | test top-1 | trainable params | GMACs/image | CPU time | wall | throughput (img/s) |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| `{r['method']}_vtab.py:demo` | {100 * r['top1']:.1f}% | {r['trainable_params']:,} | "
          f"{r['gmacs_per_image']:.4f} | {r['cpu_s']:.0f} s | {r['process_wall_s']:.0f} s | "
          f"{r.get('throughput_images_per_s', float('nan')):.0f} |")


if __name__ == "__main__":
  main()
