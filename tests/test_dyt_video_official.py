"""DyT video: the `frames` model with DyT blocks reproduces the OFFICIAL video model's logits, and `convert
--source=official-dyt` reads official video checkpoints (the attentive pooling head included).

tests/data/dyt_video_official_small.safetensors (seeded random weights in the official names: width 48, depth 3,
patch 8, 32 px, 3 frames, bottleneck 8, adapter scale 0.1) and tests/data/dyt_video_official_reference.npz (clips,
evaluation and complete-model logits, router logits and masks) were produced by running the official PyTorch
video model (tests/data/dyt_video_make_reference.py); the official code is not needed here.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_adapt import checkpoints, config_lib, methods
from vit_adapt.checkpoints import merge
from vit_adapt.errors import UserError

DATA = os.path.join(os.path.dirname(__file__), "data")
CKPT = os.path.join(DATA, "dyt_video_official_small.safetensors")


def _config(**method):
  c, _ = config_lib.make_video_config("dyt", "demo", video_model="frames")
  c.model.update(variant="Ti/8", width=48, depth=3, num_heads=3, mlp_dim=192, image_size=32, init="")
  c.video.num_frames = 3
  c.dataset.num_classes = 10
  c.method.update(scale=0.1, bottleneck=8, **method)
  return c


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(os.path.join(DATA, "dyt_video_official_reference.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def converted():
  return checkpoints.get_source("official-dyt")(checkpoints.read_tensors(CKPT), _config())


def _apply(tree, config, clips, **kw):
  model, method = methods.build_model(config)
  params = methods.init_variables(model, method, config, load_backbone=False)["params"]
  params = merge.merge(tree, params, source=CKPT)
  return jax.jit(lambda p, x: model.apply({"params": p}, x, **kw))(params, jnp.asarray(clips))


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def test_attentive_head_names(converted):
  tree, inferred = converted
  head = tree["head"]
  assert head["query_token"].shape == (1, 1, 48) and head["q"]["kernel"].shape == (48, 48)
  assert head["kernel"].shape == (48, 10) and set(head["norm_k"]) == {"scale", "bias"}
  assert inferred["method.bottleneck"] == 8


@pytest.mark.parametrize("inference", ["threshold", "masked"])
def test_logits_match_official_video_model(converted, reference, inference):
  tree, _ = converted
  logits, out = _apply(tree, _config(inference=inference), reference["clips"])
  np.testing.assert_allclose(out["dyt_logits"], reference["token_logits"], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(out["dyt_masks"], reference["masks"])
  assert _rel(logits, reference["logits"]) <= 1e-4
  assert out["activation_rate"].shape == (2,)  # per clip, averaged over its frames


def test_complete_model_and_multi_view_average(converted, reference):
  tree, _ = converted
  logits, _ = _apply(tree, _config(), reference["clips"], complete=True)
  assert _rel(logits, reference["complete_logits"]) <= 1e-4
  # Two views of each clip (the clip and a copy): the averaged logits are the clip's.
  views = np.stack([reference["clips"], reference["clips"]], axis=1)
  averaged, _ = _apply(tree, _config(), views)
  assert _rel(averaged, reference["logits"]) <= 1e-4


@pytest.mark.slow
def test_convert_video_checkpoint(tmp_path, reference):
  from vit_adapt import convert
  out = convert.convert("official-dyt", CKPT, _config(), str(tmp_path / "model"))
  _, model, _, variables = methods.load_model_dir(out)
  logits, _ = jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(reference["clips"]))
  assert _rel(logits, reference["logits"]) <= 1e-4
  # `predict --array` on uint8 clips (N, T, S, S, 3) and `--videos` on files (the config's test views).
  from vit_adapt import predict
  clips = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32, 3), dtype=np.uint8)
  np.save(tmp_path / "clips.npy", clips)
  records, got = predict.predict(out, array=str(tmp_path / "clips.npy"), batch_size=2)
  want, _ = jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(clips, jnp.float32) / 127.5 - 1.0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert len(records) == 3 and len(records[0]["top_names"]) == 5  # the demo dataset's class names
  import video_files
  for name in ("a", "b"):
    video_files.write_video(str(tmp_path / "videos" / f"{name}.mp4"), 12)
  with open(tmp_path / "videos" / "notes.txt", "w") as f:
    f.write("not a video")
  records, got = predict.predict(out, videos=str(tmp_path / "videos"))
  assert [os.path.basename(r["path"]) for r in records] == ["a.mp4", "b.mp4"] and got.shape == (2, 10)
  with pytest.raises(UserError, match="needs an image model"):
    predict.predict(out, images=str(tmp_path / "videos"))


def test_image_and_video_checkpoints_need_their_configs():
  image_config, _ = config_lib.make_config("dyt", "demo")
  with pytest.raises(UserError, match="VIDEO checkpoint"):
    checkpoints.get_source("official-dyt")(checkpoints.read_tensors(CKPT), image_config)
  image_ckpt = checkpoints.read_tensors(os.path.join(DATA, "dyt_official_small.safetensors"))
  with pytest.raises(UserError, match="IMAGE checkpoint"):
    checkpoints.get_source("official-dyt")(image_ckpt, _config())
