r"""Parameter counts of the PEFT baselines on ViT-B/16 (224 px, 100 classes), checked against their formulas.

  python experiments/param_counts.py [--variant=B/16] [--num_classes=100]

Shapes only (`jax.eval_shape`): no weights are created, no device is used. Prints a table: trainable parameters
(measured from the method's trainable regexes), the closed-form count, and the share of the backbone.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from vit_adapt import config_lib, methods
from vit_adapt.models import vit

BASELINES = ("linear", "full", "adapter", "lora", "vpt")


def backbone_params(s: vit.ViTShape, image_size: int) -> int:
  """Conv stem + class token + position embedding + blocks + final LayerNorm (no head)."""
  d, g = s.width, image_size // s.patch_size
  block = 2 * 2 * d + 4 * (d * d + d) + (d * s.mlp_dim + s.mlp_dim) + (s.mlp_dim * d + d)
  return s.patch_size ** 2 * 3 * d + d + d + (1 + g * g) * d + s.depth * block + 2 * d


def formula(method: str, c, s: vit.ViTShape) -> int:
  """Trainable parameters by the usual closed forms (head = D*C + C included)."""
  d, depth, head = s.width, s.depth, s.width * c.dataset.num_classes + c.dataset.num_classes
  m = c.method
  extra = {
      "linear": lambda: 0,
      "full": lambda: backbone_params(s, c.model.image_size),
      "adapter": lambda: depth * (2 * d * m.bottleneck + m.bottleneck + d),   # down W,b + up W,b per block
      "lora": lambda: depth * len(m.targets) * 2 * d * m.rank,                # A (D x r) + B (r x D), no bias
      "vpt": lambda: (depth if m.deep else 1) * m.num_prompts * d,            # prompts per block (deep) or once
  }[method]()
  return extra + head


def measured(method: str, c) -> tuple[int, int]:
  """(trainable, total) parameters of the model the config builds, from shapes alone."""
  model, meth = methods.build_model(c)
  rng = jax.random.PRNGKey(0)
  rngs = {"params": rng, "dropout": rng, **{k: rng for k in meth.rng_streams}}
  size = c.model.image_size
  params = jax.eval_shape(model.init, rngs, jnp.zeros((1, size, size, 3), jnp.float32))["params"]
  trainable, _ = methods.split_params(params, meth.trainable)
  return vit.count_params(trainable), vit.count_params(params)


def table(variant: str = "B/16", num_classes: int = 100) -> list[dict]:
  rows = []
  for name in BASELINES:
    c, _ = config_lib.make_config(name, "task=vtab/cifar100")
    c.model.variant = variant
    c.dataset.num_classes = num_classes
    s = vit.decode_variant(variant)
    train, total = measured(name, c)
    rows.append(dict(method=name, trainable=train, formula=formula(name, c, s), total=total,
                     share=train / backbone_params(s, c.model.image_size)))
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variant", default="B/16")
  p.add_argument("--num_classes", type=int, default=100)
  a = p.parse_args()
  rows = table(a.variant, a.num_classes)
  print(f"ViT-{a.variant} at 224 px, {a.num_classes} classes (shapes only, no device)")
  print(f"{'method':8s} {'trainable':>12s} {'formula':>12s} {'total':>12s} {'% backbone':>11s}")
  for r in rows:
    ok = "" if r["trainable"] == r["formula"] else "  MISMATCH"
    print(f"{r['method']:8s} {r['trainable']:12,d} {r['formula']:12,d} {r['total']:12,d} {100 * r['share']:10.3f}%{ok}")


if __name__ == "__main__":
  main()
