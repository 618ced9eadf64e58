"""Parity with the official Sparse-Tuning code: a converted official checkpoint reproduces its logits and kept tokens.

Reference outputs (`tests/data/sparse_tuning_official_reference.npz`) were produced by RUNNING the official code
(liuting20/Sparse-Tuning @ 550cc00, timm 0.4.12) with `tests/data/sparse_tuning_make_reference.py`, which also
regenerates the seeded official-format weights and images here, so only a few KB are committed. Model: width 768
(the official adapter hard-codes it), 12 blocks, 96 px, sparsification at blocks 3, 6, 9 with keep rate 0.7,
released Dense Adapter with the group sums, BatchNorm head in eval mode (running statistics).
"""

import importlib.util
import os

import jax
import numpy as np
import pytest

from vit_adapt import config_lib, methods
from vit_adapt.checkpoints import merge as merge_lib
from vit_adapt.checkpoints import sources
from vit_adapt.methods.sparse_tuning import official as official_sparse_tuning

DATA = os.path.join(os.path.dirname(__file__), "data")


def _load_maker():
  spec = importlib.util.spec_from_file_location("sparse_tuning_make_reference",
                                                os.path.join(DATA, "sparse_tuning_make_reference.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


MAKER = _load_maker()
REF = dict(np.load(os.path.join(DATA, "sparse_tuning_official_reference.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def state_dict():
  sd = MAKER.official_state_dict()
  # The weights are regenerated from a seed: fail clearly if numpy ever generates different numbers.
  np.testing.assert_allclose(MAKER.fingerprint(sd), REF["fingerprint"], rtol=1e-9,
                             err_msg="numpy's generator changed: rerun sparse_tuning_make_reference.py")
  return sd


def _config(fuse: bool):
  c, _ = config_lib.make_config("sparse_tuning")
  c.model.update(image_size=MAKER.IMAGE_SIZE)
  c.dataset.num_classes = MAKER.NUM_CLASSES
  c.method.update(dense_adapter="released", fuse_token=fuse, head="bn_linear",
                  sparse_blocks=MAKER.SPARSE_BLOCKS, keep_rate=MAKER.KEEP_RATE)
  return c


def test_source_is_registered():
  assert "official-sparse-tuning" in sources.source_names()
  assert sources.get_source("official-sparse-tuning") is official_sparse_tuning.from_official_sparse_tuning


@pytest.mark.parametrize("fuse", [True, False], ids=["fuse", "nofuse"])
def test_converted_checkpoint_reproduces_official_logits_and_kept_tokens(state_dict, fuse):
  config = _config(fuse)
  model, _ = methods.build_model(config)
  images = MAKER.reference_images()
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images[:1])
  tree, inferred = sources.get_source("official-sparse-tuning")(state_dict, config)
  assert inferred == {"method.dense_adapter": "released", "method.head": "bn_linear"}
  tree, cols = official_sparse_tuning.split_collections(tree)
  # The merge raises on any missing, unexpected or mis-shaped name: the mapping covers the model exactly.
  params = merge_lib.merge(tree, jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]),
                           source="official")
  assert jax.tree_util.tree_structure(cols["batch_stats"]) == jax.tree_util.tree_structure(shapes["batch_stats"])

  logits, out = jax.jit(lambda v, x: model.apply(v, x, train=False))({"params": params, **cols}, images)
  tag = "fuse" if fuse else "nofuse"
  ref = REF[f"logits_{tag}"]
  rel = np.linalg.norm(np.asarray(logits) - ref) / np.linalg.norm(ref)
  assert rel <= 1e-4, rel
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  for b in MAKER.SPARSE_BLOCKS:
    ours, theirs = np.asarray(out[f"kept_idx_{b}"]), REF[f"kept_idx_{tag}_{b}"]
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(np.sort(ours, axis=1), np.sort(theirs, axis=1), err_msg=f"block {b}")


def _small_official_state_dict(rng, width=32, depth=4, mlp=128, patch=8, grid=4, classes=47):
  """An official-format state dict of a small width (our released mode has no width limit) for the CLI path."""
  n = lambda *s: np.asarray(rng.standard_normal(s) * 0.1, np.float32)
  sd = {"cls_token": n(1, 1, width), "pos_embed": n(1, 1 + grid * grid, width),
        "patch_embed.proj.weight": n(width, 3, patch, patch), "patch_embed.proj.bias": n(width),
        "norm.weight": 1 + n(width), "norm.bias": n(width), "head.0.running_mean": n(width),
        "head.0.running_var": np.asarray(rng.uniform(0.5, 2, width), np.float32),
        "head.0.num_batches_tracked": np.asarray(3, np.int64), "head.1.weight": n(classes, width),
        "head.1.bias": n(classes)}
  for i in range(depth):
    p = f"blocks.{i}."
    sd.update({p + "norm1.weight": 1 + n(width), p + "norm1.bias": n(width), p + "norm2.weight": 1 + n(width),
               p + "norm2.bias": n(width), p + "attn.qkv.weight": n(3 * width, width),
               p + "attn.qkv.bias": n(3 * width),
               p + "attn.proj.weight": n(width, width), p + "attn.proj.bias": n(width),
               p + "mlp.fc1.weight": n(mlp, width), p + "mlp.fc1.bias": n(mlp), p + "mlp.fc2.weight": n(width, mlp),
               p + "mlp.fc2.bias": n(width)})
    for name, (o, i_) in {"down1": (64, width), "down2": (32, 64), "up1": (64, 32), "down3": (64, 96),
                          "up2": (width, 64)}.items():
      sd[f"{p}adaptmlp.{name}.weight"], sd[f"{p}adaptmlp.{name}.bias"] = n(o, i_), n(o)
  return sd


def test_convert_cli_path_keeps_batch_stats_and_names_the_released_switch(tmp_path):
  """`convert` of an official training checkpoint ({'model': state_dict} in a .pth) -> a model directory whose
  logits equal the direct conversion, BatchNorm running statistics included; the default (paper) config is told
  to switch to the released adapter."""
  torch = pytest.importorskip("torch")
  from vit_adapt import convert as convert_lib
  from vit_adapt.errors import UserError

  sd = _small_official_state_dict(np.random.default_rng(0))
  path = str(tmp_path / "checkpoint-99.pth")
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "epoch": 99}, path)

  def config(**method):
    c, _ = config_lib.make_config("sparse_tuning", "task=vtab/dtd")
    c.model.update(variant="mu/8", image_size=32, depth=4, init="")
    c.method.update(sparse_blocks=(3,), **method)
    return c

  with pytest.raises(UserError, match="dense_adapter"):
    convert_lib.convert("official-sparse-tuning", path, config(), str(tmp_path / "wrong"))
  out = convert_lib.convert("official-sparse-tuning", path, config(dense_adapter="released"), str(tmp_path / "m"))
  _, model, _, variables = methods.load_model_dir(out)
  np.testing.assert_array_equal(variables["batch_stats"]["head_bn"]["var"], sd["head.0.running_var"])
  direct, _ = official_sparse_tuning.to_variables(sd, config(dense_adapter="released"))
  images = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  got, _ = jax.jit(model.apply)(variables, images)
  want, _ = jax.jit(model.apply)(direct, images)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
