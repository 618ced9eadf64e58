"""What the persistent compilation cache saves: the same demo config run twice, each in a fresh process, sharing
one new cache directory; prints each process's time spent compiling (XLA backend compiles + reading cached
programs, from jax's monitoring events) and its wall time.

  python experiments/compile_cache.py                                   # DyT demo (its bucketed inference
  python experiments/compile_cache.py --config=configs/adapter_vtab.py:demo  # programs are the slow compiles)

The runs train `--steps` steps (compiling does not depend on how many), then evaluate and measure efficiency
as every run does. Prints a markdown table (the README's "Compilation cache" paragraph) with the device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout


def child(args) -> None:
  """One run in this process; prints {"compile_s", "retrieve_s", "wall_s", "device"} as the last line."""
  import importlib.util

  import jax
  from absl import logging

  from vit_adapt import train
  from vit_adapt.cli import compile_cache
  from vit_adapt.efficiency import measure

  logging.set_verbosity(logging.WARNING)
  seconds = {"compile": 0.0, "retrieve": 0.0}

  def listen(name, duration, **kwargs):
    if name == "/jax/core/compile/backend_compile_duration":
      seconds["compile"] += duration
    elif name == "/jax/compilation_cache/cache_retrieval_time_sec":
      seconds["retrieve"] += duration

  jax.monitoring.register_event_duration_secs_listener(listen)
  start = time.time()
  compile_cache.enable(args.cache)
  path, _, arg = args.config.partition(":")
  spec = importlib.util.spec_from_file_location("config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.train.steps = args.steps
  train.train_and_evaluate(config, args.workdir)
  print(json.dumps({"compile_s": seconds["compile"], "retrieve_s": seconds["retrieve"],
                    "wall_s": time.time() - start, "device": measure.device_description()}))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/dyt_vtab.py:demo")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--cache", help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "cache")
    for i in range(2):
      cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--config={args.config}",
             f"--steps={args.steps}", f"--cache={cache}", f"--workdir={os.path.join(tmp, f'run{i}')}"]
      out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
      rows.append(json.loads(out.strip().splitlines()[-1]))
  print(f"{args.config}, {args.steps} steps, on {rows[0]['device']}:")
  print("| process | compiling (s) | reading the cache (s) | wall (s) |")
  print("|---|---|---|---|")
  for name, r in zip(("first (empty cache)", "second (same config)"), rows):
    print(f"| {name} | {r['compile_s']:.1f} | {r['retrieve_s']:.1f} | {r['wall_s']:.1f} |")
  first, second = rows[0]["compile_s"] + rows[0]["retrieve_s"], rows[1]["compile_s"] + rows[1]["retrieve_s"]
  print(f"The second process spends {second / first:.0%} of the first's compile time.")


if __name__ == "__main__":
  main()
