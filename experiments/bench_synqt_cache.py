"""SynQT epoch time with and without the feature cache (the trainer's real step, data pipeline and cache).

One epoch = steps_per_epoch training steps (batch from the iterator + compiled step), timed after a warm-up
step, for: the image pipeline (frozen image path computed every step) and the cache in 'kv' and 'hidden' layouts
(built once before timing; the build time is reported separately). Default: embedded digits, random-init Ti/4
backbone with 4 blocks at 32 px, T=4, batch 64 (the demo model; the `:demo` config itself now runs at 16 px, see
vit_adapt/config_lib.py: apply_demo, so pass --image_size=16 for its exact setting).

  python experiments/bench_synqt_cache.py
  python experiments/bench_synqt_cache.py --variant=Ti/16 --image_size=224 --depth=12 --epochs=1

Prints a markdown table (the one in docs/synqt.md) with the device and batch size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import jax

from vit_adapt import config_lib, methods
from vit_adapt.efficiency import measure as efficiency_lib
from vit_adapt.train import optim
from vit_adapt.train import step as train_state
from vit_adapt.data import pipeline


def make_config(args, kind: str):
  c, _ = config_lib.make_config("synqt", "demo")
  c.model.update(variant=args.variant, image_size=args.image_size, depth=args.depth, drop_path=0.1)
  c.train.batch_size = args.batch_size
  c.method.update(num_queries=args.num_queries, cache_features=kind, cache_dtype=args.dtype,
                  image_drop_path=False)
  return c


def epoch_seconds(config, model, method, variables, iterator, steps: int, epochs: int) -> float:
  trainable, frozen = optim.split_trainable(variables["params"], method, config.optim)
  tx, schedule = optim.make_optimizer(config.optim, trainable, 10 ** 6, 0)
  state = train_state.create(trainable, {}, tx, config.seed)
  step = jax.jit(train_state.make_train_step(model, method, config, tx, schedule), donate_argnums=0)
  state, m = step(state, frozen, next(iterator))  # compile + warm-up
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps * epochs):
    state, m = step(state, frozen, next(iterator))
  jax.block_until_ready((state, m))
  return (time.perf_counter() - t0) / epochs


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="Ti/4")
  ap.add_argument("--image_size", type=int, default=32)
  ap.add_argument("--depth", type=int, default=4)
  ap.add_argument("--num_queries", type=int, default=4)
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--epochs", type=int, default=2)
  args = ap.parse_args()

  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for kind in ("", "kv", "hidden"):
      config = make_config(args, kind)
      model, method = methods.build_model(config)
      variables = methods.init_variables(model, method, config)
      n = pipeline.num_examples(config, config.dataset.split)
      steps = n // args.batch_size
      t0 = time.perf_counter()
      it = method.feature_cache.iterator(config, workdir, model, variables)
      build = time.perf_counter() - t0
      if it is None:
        it, build = pipeline.train_iterator(config, seed=config.seed), None
      sec = epoch_seconds(config, model, method, variables, it, steps, args.epochs)
      rows.append((kind or "none (images)", sec, build, n, steps))
      print(f"# cache={kind or 'none'}: {sec:.2f} s/epoch", flush=True)

  base = rows[0][1]
  print(f"\nSynQT epoch time, {args.variant} depth {args.depth} at {args.image_size}px, T={args.num_queries}, "
        f"batch {args.batch_size}, demo/digits train split ({rows[0][3]} images, {rows[0][4]} steps/epoch), cache "
        f"dtype {args.dtype}, device: {efficiency_lib.device_description()}\n")
  print("| cache | s / epoch | speed-up | one-off cache build s |")
  print("|---|---:|---:|---:|")
  for kind, sec, build, _, _ in rows:
    print(f"| {kind} | {sec:.2f} | {base / sec:.1f}x | {'-' if build is None else f'{build:.1f}'} |")


if __name__ == "__main__":
  main()
