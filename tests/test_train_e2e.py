"""End to end: `train_and_evaluate` for two steps of every baseline on mocked VTAB-1k data (tfds mock_data) and
on a generated image-folder dataset (the NOAH/VPT layout), checking what a run leaves in its workdir."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from tensorflow_datasets import testing as tfds_testing

from vit_adapt import methods, train
from vit_adapt.checkpoints import export
from vit_adapt.methods import base as methods_base

BASELINES = ("linear", "full", "adapter", "lora", "vpt")
RESULT_KEYS = {"task", "method", "top1", "trainable_params", "gmacs_per_image", "peak_train_memory_bytes",
               "batch_size", "dtype", "device", "wall_time_s", "eval_loss", "num_eval_examples"}


def _vtab_config(tiny_config, method, **dataset):
  c = tiny_config(method, "task=vtab/dtd")
  c.dataset.update(split="train800val200", eval_split="test", **dataset)
  c.eval.batch_size = 8
  return c


def _check_run(workdir, config, results, num_eval):
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  assert RESULT_KEYS <= set(on_disk) and on_disk["top1"] == results["top1"]
  assert on_disk["task"] == "vtab/dtd" and on_disk["method"] == config.method.name
  assert 0.0 <= on_disk["top1"] <= 1.0 and on_disk["num_eval_examples"] == num_eval
  assert on_disk["gmacs_per_image"] > 0 and on_disk["peak_train_memory_bytes"] > 0
  model, method = methods.build_model(config)
  init = methods.init_variables(model, method, config)
  trainable, frozen = methods_base.split_params(init["params"], method.trainable)
  assert on_disk["trainable_params"] == sum(x.size for x in jax.tree.leaves(trainable))
  # Adapter-only checkpoints: the training checkpoint holds exactly the trainable tree.
  steps = ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).all_steps()
  assert list(steps) == [2]
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "2", "state"))
  assert int(state["step"]) == 2
  assert set(methods_base.flatten(state["params"])) == set(methods_base.flatten(trainable))
  # The exported model reloads: trained weights moved, the frozen backbone is the initialisation.
  _, _, _, loaded = export.load_model_dir(workdir)
  flat = methods_base.flatten(loaded["params"])
  for k, v in methods_base.flatten(frozen).items():
    np.testing.assert_array_equal(flat[k], v)
  for k, v in methods_base.flatten(state["params"]).items():
    np.testing.assert_array_equal(flat[k], v)
  assert any(not np.array_equal(flat[k], v) for k, v in methods_base.flatten(trainable).items())


@pytest.mark.parametrize("method", BASELINES)
def test_two_steps_on_mocked_vtab(method, tiny_config, fast_compile, tmp_path):
  config = _vtab_config(tiny_config, method)
  with tfds_testing.mock_data(num_examples=12):
    results = train.train_and_evaluate(config, str(tmp_path))
  _check_run(tmp_path, config, results, num_eval=12)


def _folder_dataset(root, n=12):
  folder = os.path.join(root, "dtd")
  rng = np.random.default_rng(0)
  lines = []
  for i in range(n):
    rel = f"images/c{i % 4}/{i}.jpg"
    os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (24 + i, 40, 3), np.uint8)).save(os.path.join(folder, rel))
    lines.append(f"{rel} {(5 * i) % 47}")
  for split in ("train800val200", "test"):
    with open(os.path.join(folder, f"{split}.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("method", BASELINES)
def test_two_steps_on_image_folder(method, tiny_config, fast_compile, tmp_path):
  _folder_dataset(tmp_path / "data")
  config = _vtab_config(tiny_config, method, source="folder", root=str(tmp_path / "data"))
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  _check_run(tmp_path / "run", config, results, num_eval=12)
