"""Peak memory of the compiled training step: SynQT vs full fine-tuning vs AdaptFormer (and the linear probe).

For each method: ViT-B/16 at 224 (or --variant/--image_size), parameters from `jax.eval_shape` (nothing is
allocated or run), the step = `jax.value_and_grad` of the cross-entropy w.r.t. the TRAINABLE tree only, in
training mode (dropout on), frozen parameters as a separate non-differentiated argument — what the trainer
compiles, minus the optimizer update. XLA's memory analysis of the compiled program gives arguments (all
parameters + the batch), outputs (loss + gradients) and temporaries (activations kept for backward and scratch);
peak = their sum. Compile only.

  python experiments/bench_synqt_memory.py                      # ViT-B/16, batch 64
  python experiments/bench_synqt_memory.py --batch_size=8 --variant=Ti/16   # quick look

Prints a markdown table (the one in docs/synqt.md) with the device and batch size.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import jax
import jax.numpy as jnp
import optax

from vit_adapt import config_lib, methods
from vit_adapt.efficiency import measure as efficiency_lib
from vit_adapt.methods import base

GIB = 2 ** 30
# (label, method name, config.method overrides)
RUNS = [
    ("full fine-tuning", "full", {}),
    ("AdaptFormer (adapter)", "adapter", {}),
    ("linear probe", "linear", {}),
    ("SynQT, T=1", "synqt", {"num_queries": 1}),
    ("SynQT, T=16", "synqt", {"num_queries": 16}),
]


def step_memory(method_name: str, overrides: dict, *, variant: str, image_size: int, batch_size: int,
                num_classes: int = 100):
  config, _ = config_lib.make_config(method_name)
  config.model.update(variant=variant, image_size=image_size)
  config.model.drop_path = 0.1  # stochastic depth on, as the papers train
  config.method.update(overrides)
  model, method = methods.build_model(config, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype))
  trainable, frozen = base.split_params(params["params"], method.trainable)
  labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)

  def step(trainable, frozen, images, labels, rng):
    def loss_fn(t):
      logits, _ = model.apply({"params": base.merge_params(t, frozen)}, images, train=True,
                              rngs={"dropout": rng})
      onehot = jax.nn.one_hot(labels, num_classes)
      return jnp.mean(optax.softmax_cross_entropy(logits, onehot))
    return jax.value_and_grad(loss_fn)(trainable)

  mem = efficiency_lib.compiled_memory(step, trainable, frozen, x, labels, rng)
  n_train = sum(int(jnp.size(l)) if hasattr(l, "size") else 0 for l in jax.tree_util.tree_leaves(trainable))
  return mem, n_train


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="B/16")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--batch_size", type=int, default=64)
  args = ap.parse_args()
  rows = {}
  for label, name, overrides in RUNS:
    mem, n = step_memory(name, overrides, variant=args.variant, image_size=args.image_size,
                         batch_size=args.batch_size)
    rows[label] = (mem, n)
    print(f"# {label}: peak {mem.peak_bytes / GIB:.2f} GiB (compiled)", flush=True)
  full = rows["full fine-tuning"][0].peak_bytes
  ada = rows["AdaptFormer (adapter)"][0].peak_bytes
  print(f"\nCompiled training-step memory (value_and_grad w.r.t. the trainable tree), ViT-{args.variant} at "
        f"{args.image_size}px, batch {args.batch_size}, float32, device: {efficiency_lib.device_description()}\n")
  print("| method | trainable params | arguments GiB | outputs GiB | temporaries GiB | peak GiB | vs full FT | "
        "vs AdaptFormer |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for label, (m, n) in rows.items():
    print(f"| {label} | {n / 1e6:.2f} M | {m.argument_bytes / GIB:.2f} | {m.output_bytes / GIB:.2f} | "
          f"{m.temp_bytes / GIB:.2f} | {m.peak_bytes / GIB:.2f} | {m.peak_bytes / full:.1%} | "
          f"{m.peak_bytes / ada:.1%} |")


if __name__ == "__main__":
  main()
