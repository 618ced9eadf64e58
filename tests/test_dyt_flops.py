"""DyT GMACs: the paper's counting (dyt_flops) and the compiled program of the capacity path agree at ViT-B/16.

Reference values (spec, fvcore convention, attention matmuls included, 100 classes): dense ViT-B/16 17.582 G;
DyT r=16 with all tokens 17.642 G; with 98 of 196 patch tokens active in every layer 12.088 G (r=8 12.059,
r=64 12.263), the routers' 0.0018 G included as in the official count. The compiled check lowers the real B/16 model with eval_shape'd parameters (compile only).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_adapt.efficiency import measure as efficiency_lib
from vit_adapt.methods import dyt
from vit_adapt.methods.dyt import flops as dyt_flops
from vit_adapt.models import vit

B16 = dict(width=768, mlp_dim=3072, num_tokens=197)


def _b16(**method):
  c = dyt.defaults()
  c.update(method)
  mc = ml_collections.ConfigDict(dict(variant="B/16", image_size=224, dtype="float32", pool="tok", dropout=0.0,
                                      drop_path=0.0, head_init_std=0.01))
  kw = vit.backbone_kwargs(mc, 100)
  kw.update(dyt.model_kwargs(c, kw))
  return dyt.DyTVisionTransformer(**kw)


def test_paper_counting_matches_reference_values():
  base = dyt_flops.base_macs(width=768, patch_size=16, num_patches=196, num_classes=100)
  dense = dyt_flops.dense_vit_macs(width=768, depth=12, mlp_dim=3072, patch_size=16, num_patches=196,
                                   num_classes=100)
  assert dense / 1e9 == pytest.approx(17.582, abs=5e-4)
  for r, want in [(8, 12.0593), (16, 12.0884), (64, 12.2627)]:
    got = base + 12 * dyt_flops.block_macs(99, dispatch="mlp", bottleneck=r, **B16)
    assert got / 1e9 == pytest.approx(want, abs=5e-4)
  full = base + 12 * dyt_flops.block_macs(197, dispatch="mlp", bottleneck=16, **B16)
  assert full / 1e9 == pytest.approx(17.6418, abs=5e-4)
  # The model's per-image figure uses the same counting, from the dispatched token counts.
  model = _b16()
  np.testing.assert_allclose(model.gmacs(jnp.full((2, 12), 99)), 12.0884, rtol=1e-5)


def test_variants_count_less_when_fewer_tokens_and_dense_at_full():
  for d in dyt.DISPATCHES:
    full = dyt_flops.block_macs(197, dispatch=d, bottleneck=16, **B16)
    half = dyt_flops.block_macs(99, dispatch=d, bottleneck=16, **B16)
    assert half < full
    assert full == pytest.approx(dyt_flops.block_macs(197, dispatch="mlp", bottleneck=16, **B16))
    # Skipped tokens as keys/values ('all') cost more than the selected tokens only (the default), same at full.
    every = functools.partial(dyt_flops.block_macs, dispatch=d, bottleneck=16, attention_keys="all", **B16)
    assert every(197) == pytest.approx(full)
    assert (every(99) > half) == (d in ("attention", "attention_mlp"))


def test_compiled_capacity_program_matches_paper_count():
  """98 of 196 patch tokens per layer through the capacity path: the program count is the paper's count."""
  model = _b16(inference="capacity", capacity_rate=0.5)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 224, 224, 3))))
  gmacs = efficiency_lib.lowered_gmacs(lambda v, im: model.apply(v, im)[0], params, x)
  assert gmacs == pytest.approx(float(model.gmacs(jnp.full((1, 12), 99))[0]), rel=1e-6), gmacs


def test_traced_count_at_512px_does_not_overflow():
  # ViT-B/16 at 512 px: 1025 tokens, 4.1 G multiply-adds of attention per block, beyond a Python int JAX takes
  # as a constant of a traced computation (the segmentation recipe's DyT backbone).
  kw = dict(B16, num_tokens=1025)
  for dispatch in ("mlp", "attention", "attention_mlp", "layer"):
    traced = jax.jit(lambda t, d=dispatch: dyt_flops.block_macs(t, dispatch=d, bottleneck=64, **kw))(
        jnp.array([1025.0, 513.0]))
    exact = [dyt_flops.block_macs(t, dispatch=dispatch, bottleneck=64, **kw) for t in (1025, 513)]
    np.testing.assert_allclose(np.asarray(traced, np.float64), exact, rtol=1e-6)
  assert dyt_flops.block_macs(1025, dispatch="mlp", bottleneck=64, **kw) > 2 ** 32  # ints stay exact ints
