"""`official-dyt` import: a checkpoint in the official names reproduces the OFFICIAL code's logits.

tests/data/dyt_official_small.safetensors (seeded random weights, official parameter names, width 48, depth 3,
patch 8, 32 px, bottleneck 8) and tests/data/dyt_official_reference.npz (inputs, evaluation logits, router logits
and masks, complete-model logits) were produced by running the official PyTorch code
(tests/data/dyt_make_reference.py); the official code is not needed here.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_adapt import checkpoints, methods
from vit_adapt.checkpoints import merge
from vit_adapt.methods.dyt import official as official_dyt
from vit_adapt.errors import UserError

DATA = os.path.join(os.path.dirname(__file__), "data")
CKPT = os.path.join(DATA, "dyt_official_small.safetensors")


def _config(**method):
  from vit_adapt import config_lib
  c, _ = config_lib.make_config("dyt", "demo")
  c.model.update(variant="Ti/8", width=48, depth=3, num_heads=3, mlp_dim=192, image_size=32, init="")
  c.dataset.num_classes = 10
  c.method.update(scale=0.1, bottleneck=8, **method)
  return c


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(os.path.join(DATA, "dyt_official_reference.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def converted():
  tensors = checkpoints.read_tensors(CKPT)
  tree, inferred = checkpoints.get_source("official-dyt")(tensors, _config())
  return tree, inferred


def _apply(tree, config, images, **kw):
  model, method = methods.build_model(config)
  params = methods.init_variables(model, method, config, load_backbone=False)["params"]
  params = merge.merge(tree, params, source=CKPT)
  return jax.jit(lambda p, x: model.apply({"params": p}, x, **kw))(params, jnp.asarray(images))


def test_names_and_inferred_fields(converted):
  tree, inferred = converted
  assert inferred == {"method.bottleneck": 8, "method.num_experts": 1, "method.dispatch": "mlp"}
  blk = tree["Transformer"]["encoderblock_2"]
  assert blk["router"]["kernel"].shape == (48, 1) and blk["adapter"]["down"]["kernel"].shape == (48, 8)
  assert blk["adapter"]["up"]["kernel"].shape == (8, 48)


@pytest.mark.parametrize("inference", ["threshold", "masked"])
def test_logits_match_official(converted, reference, inference):
  tree, _ = converted
  logits, out = _apply(tree, _config(inference=inference), reference["images_nhwc"])
  np.testing.assert_allclose(out["dyt_logits"], reference["token_logits"], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(out["dyt_masks"], reference["masks"])
  ref = reference["logits"]
  rel = float(np.linalg.norm(np.asarray(logits) - ref) / np.linalg.norm(ref))
  assert rel <= 1e-4, rel


def test_complete_model_matches_official(converted, reference):
  tree, _ = converted
  logits, _ = _apply(tree, _config(), reference["images_nhwc"], complete=True)
  ref = reference["complete_logits"]
  assert float(np.linalg.norm(np.asarray(logits) - ref) / np.linalg.norm(ref)) <= 1e-4


def test_convert_cli_roundtrip(tmp_path, reference):
  """The `convert` library path writes a model directory whose model reproduces the official logits."""
  from vit_adapt import convert
  c = _config()
  c.method.bottleneck = 16  # contradicted by the checkpoint: convert must say so
  with pytest.raises(UserError, match="bottleneck"):
    convert.convert("official-dyt", CKPT, c, str(tmp_path / "bad"))
  out = convert.convert("official-dyt", CKPT, _config(), str(tmp_path / "model"))
  config, model, _, variables = methods.load_model_dir(out)
  logits, _ = jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(reference["images_nhwc"]))
  ref = reference["logits"]
  assert float(np.linalg.norm(np.asarray(logits) - ref) / np.linalg.norm(ref)) <= 1e-4


def test_not_a_dyt_checkpoint():
  with pytest.raises(UserError, match="not an official DyT checkpoint"):
    official_dyt.from_official_dyt({"patch_embed.proj.weight": np.zeros((4, 3, 2, 2))}, _config())
  bad = dict(checkpoints.read_tensors(CKPT))
  bad["blocks.0.adaptmlp.adapter_layer_norm_before.weight"] = np.ones(48, np.float32)
  with pytest.raises(UserError, match="adapter LayerNorm"):
    official_dyt.from_official_dyt(bad, _config())
