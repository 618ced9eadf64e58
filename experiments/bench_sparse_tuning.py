r"""Dense ViT vs Sparse-Tuning: inference images/s and training step time, one run, same device, same batch.

  python experiments/bench_sparse_tuning.py [--variant=B/16] [--image_size=224] [--batch_size=8] [--repeats=5]

Random weights (speed does not depend on their values). Rows:
  dense          the plain ViT (linear probe: only the head trains)
  adapter        AdaptFormer adapters on the dense ViT (the usual dense PEFT baseline; same training step shape)
  sparse_tuning  paper Dense Adapter and released adapter, with and without token fusion
Inference: the compiled `model.apply(train=False)` (what `predict` and the evaluation run), ahead-of-time compiled,
warmed up, median of `repeats` timed calls. Training: one jitted AdamW step on the trainable sub-tree
(gradients of the trainable parameters only, BatchNorm statistics updated), timed the same way. GMACs are counted
on the inference program in the library's convention (fvcore's: dot/conv multiply-adds + LayerNorms;
`--gmacs_only` prints them without timing). Rows are measured interleaved, round-robin, so a load change on a shared
machine hits every row alike; the speedup column divides by the dense row of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_adapt import methods
from vit_adapt.efficiency import measure as efficiency_lib

ROWS = (
    ("dense", "linear", {}),
    ("adapter", "adapter", {}),
    ("sparse_tuning (paper)", "sparse_tuning", dict(dense_adapter="paper", fuse_token=True)),
    ("sparse_tuning (paper, no fusion)", "sparse_tuning", dict(dense_adapter="paper", fuse_token=False)),
    ("sparse_tuning (released)", "sparse_tuning", dict(dense_adapter="released", fuse_token=True)),
)


def build(method: str, fields: dict, args):
  c = ml_collections.ConfigDict({
      "model": dict(variant=args.variant, image_size=args.image_size, depth=0, width=0, mlp_dim=0, num_heads=0,
                    head_init_std=0.01),
      "method": {**methods.get(method).defaults().to_dict(), "name": method, **fields},
      "dataset": {"num_classes": 100}})
  model, m = methods.build_model(c)
  x = jnp.zeros((1, args.image_size, args.image_size, 3), jnp.float32)
  variables = dict(jax.jit(model.init)(jax.random.PRNGKey(0), x))
  return model, m, variables


def compiled_fns(model, method, variables, args):
  """-> (gmacs, infer(), train()) zero-argument callables of compiled programs on fixed inputs."""
  b, s = args.batch_size, args.image_size
  images = jax.random.uniform(jax.random.PRNGKey(1), (b, s, s, 3), minval=-1, maxval=1)
  labels = jax.nn.one_hot(jnp.arange(b) % 100, 100)
  infer_fn = lambda v, x: model.apply(v, x, train=False)[0]
  gmacs = efficiency_lib.lowered_gmacs(infer_fn, variables, images[:1])
  infer = jax.jit(infer_fn).lower(variables, images).compile()

  trainable, frozen = methods.split_params(variables["params"], method.trainable)
  state = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adamw(1e-3, weight_decay=1e-4)
  opt = tx.init(trainable)

  def step(trainable, opt, state, frozen, images, labels):
    def loss_fn(tr):
      v = {"params": methods.merge_params(tr, frozen), **state}
      (logits, _), new_state = model.apply(v, images, train=True, mutable=list(state),
                                           rngs={"dropout": jax.random.PRNGKey(2)})
      return optax.softmax_cross_entropy(logits, labels).mean(), new_state
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt = tx.update(grads, opt, trainable)
    return optax.apply_updates(trainable, updates), opt, new_state, loss

  train = jax.jit(step).lower(trainable, opt, state, frozen, images, labels).compile()
  return gmacs, (lambda: infer(variables, images)), (lambda: train(trainable, opt, state, frozen, images, labels))


def timed(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="B/16")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--gmacs_only", action="store_true", help="print each row's GMACs (no timing) and stop")
  args = ap.parse_args()
  if args.gmacs_only:
    print(f"GMACs per image (fvcore convention), ViT-{args.variant} at {args.image_size} px\n\n| model | GMACs |\n|---|---|")

  rows = []
  for name, method, fields in ROWS:
    model, m, variables = build(method, fields, args)
    if args.gmacs_only:
      x = jnp.zeros((1, args.image_size, args.image_size, 3), jnp.float32)
      print(f"| {name} | {efficiency_lib.lowered_gmacs(lambda v, im: model.apply(v, im)[0], variables, x):.2f} |",
            flush=True)
      continue
    gmacs, infer, train = compiled_fns(model, m, variables, args)
    rows.append(dict(name=name, gmacs=gmacs, infer=infer, train=train, t_inf=[], t_train=[]))
    print(f"compiled {name}", flush=True)
  if args.gmacs_only:
    return
  for r in rows:
    for _ in range(args.warmup):
      timed(r["infer"]), timed(r["train"])
  for _ in range(args.repeats):  # round-robin: every row sees the same machine load
    for r in rows:
      r["t_inf"].append(timed(r["infer"]))
      r["t_train"].append(timed(r["train"]))

  dense = rows[0]
  d_inf = statistics.median(dense["t_inf"])
  print(f"\nDevice: {efficiency_lib.device_description()}; ViT-{args.variant} at {args.image_size} px, "
        f"batch {args.batch_size}, float32, random weights; median of {args.repeats} interleaved runs.\n")
  print("| model | GMACs/image | GMACs ratio | inference images/s | inference speedup | train step ms |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    t_inf, t_train = statistics.median(r["t_inf"]), statistics.median(r["t_train"])
    print(f"| {r['name']} | {r['gmacs']:.2f} | {dense['gmacs'] / r['gmacs']:.2f}x | "
          f"{args.batch_size / t_inf:.2f} | {d_inf / t_inf:.2f}x | {1000 * t_train:.0f} |")


if __name__ == "__main__":
  main()
