"""`official-dyt` on the official SEGMENTATION backbone: our dense DyT model's pyramid equals the official one.

tests/data/dyt_seg_official_small.npz (a seeded random backbone in the official names: width 32, 2 heads, depth 4,
patch 8, 64 px, bottleneck 8, adapter scale 0.1, features of blocks 0..3, BEiT pyramid convolutions, zero
relative position bias tables) and tests/data/dyt_seg_official_reference.npz (inputs, the four pyramid maps,
router logits and masks) were produced by running dense_tasks/Segmentation/backbone/ of the official code
(tests/data/dyt_seg_make_reference.py); the official code is not needed here.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_adapt import checkpoints, methods
from vit_adapt.checkpoints import merge
from vit_adapt.errors import UserError

DATA = os.path.join(os.path.dirname(__file__), "data")
CKPT = os.path.join(DATA, "dyt_seg_official_small.npz")


def _config(head="upernet"):
  from vit_adapt import config_lib
  c, _ = config_lib.make_config("dyt", "task=demo/digit_scenes")
  c.model.update(variant="Ti/8", width=32, depth=4, num_heads=2, mlp_dim=128, image_size=64, init="", head=head,
                 feature_blocks=(0, 1, 2, 3), head_channels=8, aux_channels=8)
  c.method.update(scale=0.1, bottleneck=8, complete_pass=False, num_buckets=2)  # fewer branches: faster compile
  return c


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(os.path.join(DATA, "dyt_seg_official_reference.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def tensors():
  return checkpoints.read_tensors(CKPT)


def test_pyramid_matches_official(tensors, reference):
  config = _config()
  tree, inferred = checkpoints.get_source("official-dyt")(tensors, config)
  assert inferred["method.bottleneck"] == 8
  assert tree["head"]["pyramid"]["fpn1_0"]["kernel"].shape == (2, 2, 32, 32)
  model, method = methods.build_model(config)
  # Zeros in the model's shapes stand in for its initialisation (compiling the init costs more than the test).
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), methods.abstract_variables(model, method, config))
  params = merge.merge(tree, variables["params"], source=CKPT)  # the decode heads keep their (zero) values
  variables = {**variables, "params": params}
  levels, out = jax.jit(lambda v, x: model.apply(v, x, method=model.pyramid))(
      variables, jnp.asarray(reference["images_nhwc"]))
  np.testing.assert_allclose(out["dyt_logits"], reference["token_logits"], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(out["dyt_masks"], reference["masks"])
  assert 0.2 < float(np.mean(reference["masks"])) < 0.8  # routers skip some tokens and keep others
  for i, level in enumerate(levels):
    ref = reference[f"level_{i}"]
    assert level.shape == ref.shape
    rel = float(np.linalg.norm(np.asarray(level) - ref) / np.linalg.norm(ref))
    assert rel <= 1e-4, (i, rel)


def test_trained_relative_position_bias_is_refused(tensors):
  bad = dict(tensors)
  bad["blocks.1.attn.relative_position_bias_table"] = np.full_like(
      tensors["blocks.1.attn.relative_position_bias_table"], 0.5)
  with pytest.raises(UserError, match="relative position bias"):
    checkpoints.get_source("official-dyt")(bad, _config())


def test_segmentation_backbone_needs_a_dense_config(tensors):
  with pytest.raises(UserError, match="SEGMENTATION backbone"):
    checkpoints.get_source("official-dyt")(tensors, _config(head="linear"))
