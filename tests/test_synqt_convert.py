"""`official-synqt` import: a seeded official-format checkpoint reproduces the official code's logits.

The reference logits in `tests/data/synqt_reference.npz` come from RUNNING the official SynQT code (float64) on
the weights of `tests/data/synqt_official_weights.py` (see `synqt_make_reference.py`). Width 768 and 12 layers
are hard-coded by the official module; the rest is shrunk (32 px, MLP 192, 4 queries, 5 classes).
"""

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_adapt.checkpoints import merge as merge_lib
from vit_adapt.checkpoints import sources
from vit_adapt.errors import UserError
from vit_adapt.methods import base
from vit_adapt.methods import synqt
from vit_adapt.models import vit

DATA = os.path.join(os.path.dirname(__file__), "data")
sys.path.insert(0, DATA)
import synqt_official_weights as W  # noqa: E402


def _config(num_queries=W.QUERIES):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(variant="B/16", mlp_dim=W.MLP, image_size=W.IMAGE, depth=0, width=0,
                                           num_heads=0, dtype="float32", pool="tok", dropout=0.0,
                                           drop_path=0.1, head_init_std=0.0))
  c.method = synqt.defaults()
  c.method.num_queries = num_queries
  return c


def _model(config, num_classes=W.CLASSES):
  kw = vit.backbone_kwargs(config.model, num_classes)
  kw.update(synqt.model_kwargs(config.method, kw))
  return synqt.SynQTViT(**kw)


@pytest.fixture(scope="module")
def converted():
  tensors = W.official_state_dict()
  config = _config(num_queries=1)  # deliberately wrong: the converter must infer T from the shapes
  params, inferred = sources.get_source("official-synqt")(tensors, config)
  return tensors, params, inferred


def test_infers_query_count_and_maps_every_used_tensor(converted):
  tensors, params, inferred = converted
  assert inferred == {"method.num_queries": W.QUERIES}
  flat = merge_lib.flat(params)
  assert not [k for k in flat if "." in k]  # nothing left over (leftovers keep their dotted names)
  assert flat["head/kernel"].shape == (768, W.CLASSES)
  assert flat["qsm/queries"].shape == (12, W.QUERIES, 768)
  assert flat["qsm/layer_3/attn_scale"].shape == ()
  np.testing.assert_array_equal(flat["qsm/layer_3/ffn_scale"], tensors["synqt.qsm_block.3.ffn_scale"][0])
  np.testing.assert_array_equal(flat["qsm/layer_5/out_proj/fc2/kernel"],
                                tensors["synqt.qsm_block.5.attn.proj.mlp.fc2.weight"].T)
  np.testing.assert_array_equal(flat["synqt_head/weight/kernel"],
                                tensors["synqt.out_combine.get_weight.fc1.weight"].T)
  used = sum(v.size for v in flat.values())
  unused = 12 * 2 * 768 + 37  # synqt.pre_norm.* and synqt.out_combine.weight: never read by the forward
  assert used + unused == sum(v.size for v in tensors.values())


def test_converted_checkpoint_reproduces_official_logits(converted):
  _, params, inferred = converted
  config = _config(num_queries=inferred["method.num_queries"])
  model = _model(config)
  target = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, W.IMAGE, W.IMAGE, 3)))["params"]
  target = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), target)
  merged = merge_lib.merge(params, target, source="official-synqt test")  # every name and shape must match
  ref = np.load(os.path.join(DATA, "synqt_reference.npz"), allow_pickle=False)
  images = jnp.asarray(ref["images_nchw"].transpose(0, 2, 3, 1))
  logits, _ = jax.jit(lambda p, x: model.apply({"params": p}, x))(merged, images)
  rel = np.abs(np.asarray(logits) - ref["logits"]).max() / np.abs(ref["logits"]).max()
  print("relative error vs official:", rel)
  assert rel <= 1e-4, rel
  # The trainable part alone (the official trainable set minus the two unused tensors) and its count.
  trainable, _ = base.split_params(merged, synqt.SYNQT.trainable)
  official_count = 2_622_866 + 9_216 * (W.QUERIES - 1) + 769 * W.CLASSES
  assert vit.count_params(trainable) == official_count - 18_469


def test_refuses_a_checkpoint_without_queries():
  with pytest.raises(UserError, match="synqt.q"):
    sources.get_source("official-synqt")({"blocks.0.norm1.weight": np.ones(768, np.float32)}, _config())


def test_trainable_only_state_dict_converts_without_backbone():
  tensors = {k: v for k, v in W.official_state_dict(queries=2, classes=3).items()
             if k.startswith("synqt.") or k.startswith("head.")}
  params, inferred = sources.get_source("official-synqt")(tensors, _config())
  assert inferred == {"method.num_queries": 2}
  assert set(params) == {"qsm", "synqt_head", "head"}
