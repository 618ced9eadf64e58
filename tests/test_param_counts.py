"""Parameter counts of the baselines at ViT-B/16 (224 px, 100 classes) against the usual figures and formulas.

Shapes only (`jax.eval_shape`), no weights. The closed forms are written out here, independently of
`experiments/param_counts.py` (which prints the same table).
"""

import jax
import jax.numpy as jnp
import pytest

from vit_adapt import config_lib, methods
from vit_adapt.models import vit

D, L, C = 768, 12, 100
HEAD = D * C + C                  # 76,900
BACKBONE_B16 = 85_798_656         # ViT-B/16 at 224 without head (timm: 86,567,656 with a 1000-class head)


def counts(method: str, **fields):
  c, _ = config_lib.make_config(method, "task=vtab/cifar100")
  assert c.model.variant == "B/16" and c.dataset.num_classes == C
  c.method.update(fields)
  model, m = methods.build_model(c)
  rng = jax.random.PRNGKey(0)
  rngs = {"params": rng, "dropout": rng, **{k: rng for k in m.rng_streams}}
  params = jax.eval_shape(model.init, rngs, jnp.zeros((1, 224, 224, 3)))["params"]
  trainable, frozen = methods.split_params(params, m.trainable)
  counts = dict(trainable=vit.count_params(trainable), frozen=vit.count_params(frozen),
                total=vit.count_params(params))
  print(f"{method} {fields}: {counts}")
  return counts, c.method


def test_linear_and_full():
  lin, _ = counts("linear")
  assert lin == dict(trainable=HEAD, frozen=BACKBONE_B16, total=BACKBONE_B16 + HEAD)
  full, _ = counts("full")
  assert full == dict(trainable=BACKBONE_B16 + HEAD, frozen=0, total=BACKBONE_B16 + HEAD)


@pytest.mark.parametrize("bottleneck", [64, 8])
def test_adapter(bottleneck):
  n, c = counts("adapter", bottleneck=bottleneck)
  extra = L * (2 * D * c.bottleneck + c.bottleneck + D)
  assert n == dict(trainable=extra + HEAD, frozen=BACKBONE_B16, total=BACKBONE_B16 + extra + HEAD)
  if bottleneck == 64:
    assert extra == 1_189_632  # AdaptFormer-64's 1.19 M


@pytest.mark.parametrize("targets,rank", [("qv", 8), ("qkvo", 4)])
def test_lora(targets, rank):
  n, c = counts("lora", targets=targets, rank=rank)
  extra = L * len(c.targets) * 2 * D * c.rank
  assert n == dict(trainable=extra + HEAD, frozen=BACKBONE_B16, total=BACKBONE_B16 + extra + HEAD)
  if (targets, rank) == ("qv", 8):
    assert extra == 294_912  # LoRA r=8 on query and value: 0.29 M


@pytest.mark.parametrize("deep", [True, False])
def test_vpt(deep):
  n, c = counts("vpt", deep=deep, num_prompts=50)
  extra = (L if deep else 1) * c.num_prompts * D
  assert n == dict(trainable=extra + HEAD, frozen=BACKBONE_B16, total=BACKBONE_B16 + extra + HEAD)


@pytest.mark.parametrize("r,expected", [(8, 165_996), (16, 313_548), (32, 608_652), (64, 1_198_860)])
def test_dyt_trainable_without_head_matches_the_official_counts(r, expected):
  """Adapters D*r*2 + r + D and a D->1 router per block (the spec's table of the official model)."""
  got, _ = counts("dyt", bottleneck=r)
  assert got["trainable"] - HEAD == expected == L * (2 * D * r + r + D) + L * (D + 1)
