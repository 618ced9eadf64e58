"""convert -> predict round trips for every baseline: predictions equal calling the model directly.

A random plain ViT (the `mu/8` test size) is written as a Google pre-Linen `.npz`, converted for each baseline,
and predicted from (full scope); then the method's trainable parameters are randomised and stored the way the
trainer stores them (trainable scope, in WORKDIR/model/) and predicted from the workdir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_config
from flax import traverse_util
from PIL import Image

from vit_adapt import convert, methods, predict
from vit_adapt.checkpoints import model_dir as model_dir_lib
from vit_adapt.data import images as images_lib
from vit_adapt.models import vit

pytestmark = pytest.mark.usefixtures("fast_compile")  # tiny models: compile time dominates
BASELINES = ["linear", "full", "adapter", "lora", "vpt"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(method):
  return make_tiny_config(method, model=dict(depth=2))


def random_like(tree, seed):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_unflatten(treedef, [rng.normal(0, 0.2, np.shape(x)).astype(np.float32) for x in leaves])


def pre_linen_npz(params: dict, path) -> None:
  """Our backbone tree -> the original Google file layout (pre-Linen block module numbering)."""
  renames = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1", "LayerNorm_1": "LayerNorm_2",
             "MlpBlock_0": "MlpBlock_3"}
  flat = {}
  for k, v in traverse_util.flatten_dict(params, sep="/").items():
    parts = k.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_"):
      parts[2] = renames.get(parts[2], parts[2])
    flat["/".join(parts)] = np.asarray(v)
  np.savez(path, **flat)


@pytest.fixture(scope="module")
def google_file(tmp_path_factory):
  """A random backbone (+ 10-class head) of the tiny test size in the original Google .npz layout."""
  config = tiny_config("linear")
  model = vit.VisionTransformer(**vit.backbone_kwargs(config.model, config.dataset.num_classes))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  params = random_like(shapes, seed=3)
  path = tmp_path_factory.mktemp("ckpt") / "vit_mu8.npz"
  pre_linen_npz(params, path)
  return str(path), params


@pytest.fixture(scope="module")
def pixels():
  return np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3)).astype(np.uint8)


def direct_logits(model, variables, config, pixels):
  x = images_lib.normalize(pixels, config.dataset.normalization)
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False)[0])(variables, x))


@pytest.mark.parametrize("method", BASELINES)
def test_convert_then_predict(method, google_file, pixels, tmp_path):
  path, backbone = google_file
  config = tiny_config(method)
  out = convert.convert("npz", path, config, str(tmp_path / "model"))
  loaded_config, model, _, variables = methods.load_model_dir(out)
  assert loaded_config.method.name == method
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  for k, v in traverse_util.flatten_dict(backbone, sep="/").items():
    np.testing.assert_array_equal(flat[k], v, err_msg=k)

  np.save(tmp_path / "x.npy", pixels)
  _, logits = predict.predict(out, array=str(tmp_path / "x.npy"), batch_size=len(pixels))
  np.testing.assert_array_equal(logits, direct_logits(model, variables, config, pixels))

  # The trainer's export: trainable scope in WORKDIR/model; method parameters made non-trivial.
  m = methods.get(method)
  trainable, frozen = methods.split_params(variables["params"], m.trainable)
  trained = {**variables, "params": methods.merge_params(random_like(trainable, seed=7), frozen)}
  config.model.init = out  # the frozen backbone comes back from here
  workdir = tmp_path / "run"
  methods.save_model_dir(str(workdir / "model"), config, trained, scope="trainable")
  records, logits = predict.predict(str(workdir), array=str(tmp_path / "x.npy"), batch_size=len(pixels))
  np.testing.assert_array_equal(logits, direct_logits(model, trained, config, pixels))
  assert [r["index"] for r in records] == list(range(len(pixels)))
  assert records[0]["top_classes"] == np.argsort(-logits[0])[:5].tolist()


def test_padded_last_batch_matches(google_file, pixels, tmp_path):
  out = convert.convert("npz", google_file[0], tiny_config("adapter"), str(tmp_path / "model"))
  np.save(tmp_path / "x.npy", pixels)
  _, whole = predict.predict(out, array=str(tmp_path / "x.npy"), batch_size=6)
  _, padded = predict.predict(out, array=str(tmp_path / "x.npy"), batch_size=4)  # 4 + (2 padded to 4)
  np.testing.assert_allclose(padded, whole, rtol=1e-5, atol=1e-6)


def test_saved_config_round_trips(google_file, tmp_path):
  config = tiny_config("lora")
  out = convert.convert("npz", google_file[0], config, str(tmp_path / "model"))
  meta = json.load(open(os.path.join(out, "meta.json")))
  assert meta["scope"] == "full" and meta["source"] == "npz" and meta["method"] == "lora"
  assert model_dir_lib.read_config(out).to_dict() == config.to_dict()


def test_cli_convert_then_predict_images(google_file, tmp_path):
  """The real command lines, with an image folder (files of several sizes, resized bicubically)."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  rng = np.random.RandomState(1)
  for i, size in enumerate([(40, 30), (32, 32), (64, 48)]):
    Image.fromarray(rng.randint(0, 256, size + (3,)).astype(np.uint8)).save(folder / f"img{i}.png")
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
         "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  out = tmp_path / "model"
  run = lambda *a: subprocess.run([sys.executable, "-m", *a], capture_output=True, text=True, env=env, cwd=ROOT)
  r = run("vit_adapt.convert", "--source=npz", f"--checkpoint={google_file[0]}",
          "--config=configs/adapter_vtab.py:demo", "--config.model.variant=mu/8", "--config.model.depth=2",
          "--config.model.image_size=32", "--config.method.bottleneck=8", f"--out={out}")
  assert r.returncode == 0, r.stderr
  r = run("vit_adapt.predict", f"--checkpoint={out}", f"--images={folder}", f"--output={tmp_path / 'p.jsonl'}",
          f"--logits={tmp_path / 'l.npy'}", "--batch_size=2")
  assert r.returncode == 0, r.stderr
  lines = [json.loads(l) for l in open(tmp_path / "p.jsonl")]
  assert [os.path.basename(l["path"]) for l in lines] == ["img0.png", "img1.png", "img2.png"]
  assert all(len(l["top_classes"]) == 5 and abs(sum(l["top_probs"]) - 1) < 1 for l in lines)
  logits = np.load(tmp_path / "l.npy")
  assert logits.shape == (3, 10)
  config, model, _, variables = methods.load_model_dir(str(out))
  pixels = np.stack([images_lib.resize(images_lib.decode(str(folder / f"img{i}.png")), 32) for i in range(3)])
  np.testing.assert_allclose(logits, direct_logits(model, variables, config, pixels), rtol=1e-5, atol=1e-6)


def test_trainable_scope_with_relative_backbone_path(google_file, tmp_path, monkeypatch):
  """A run's model/ keeps working from another directory although its config names the backbone relatively."""
  monkeypatch.chdir(tmp_path)
  config = tiny_config("adapter")
  config.model.init = os.path.relpath(google_file[0], tmp_path)
  model, method = methods.build_model(config)
  variables = methods.init_variables(model, method, config)
  methods.save_model_dir("run/model", config, variables, scope="trainable")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  loaded_config, _, _, loaded = methods.load_model_dir(str(tmp_path / "run"))
  assert loaded_config.model.init == google_file[0]
  for a, b in zip(jax.tree_util.tree_leaves(loaded["params"]), jax.tree_util.tree_leaves(variables["params"])):
    np.testing.assert_array_equal(a, b)
