"""Sparse-Tuning end to end through `vit_adapt.train.train_and_evaluate`: two steps of a tiny model on mocked
VTAB-1k data (tfds mock_data) and on the embedded demo dataset, with the config file the README documents."""

import importlib.util
import json
import os

import numpy as np
import pytest
from tensorflow_datasets import testing as tfds_testing

from vit_adapt import config_lib, methods
from vit_adapt import train
from vit_adapt.methods import base as methods_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_file(arg):
  spec = importlib.util.spec_from_file_location("sparse_tuning_vtab", os.path.join(ROOT, "configs",
                                                                                    "sparse_tuning_vtab.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(arg)


def _shrink(c, depth=3, **method):
  """The config file's recipe on a small width-32 ViT at 32 px, two steps of batch 8."""
  c.model.update(variant="mu/8", image_size=32, depth=depth, init="")
  c.train.update(batch_size=8, steps=2, warmup_epochs=0, log_every_steps=1, eval_every_epochs=0,
                 checkpoint_every_steps=0)
  c.eval.batch_size = 8
  c.efficiency.update(enabled=False, batch_size=8, repeats=2)
  c.dataset.update(num_threads=2, prefetch=2)
  c.method.update(**{"sparse_blocks": (1, 2), **method})
  return c


def _check(workdir, config, num_eval):
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  assert res["method"] == "sparse_tuning" and res["num_eval_examples"] == num_eval
  assert 0.0 <= res["top1"] <= 1.0 and np.isfinite(res["eval_loss"]) and res["gmacs_per_image"] > 0
  model, method = methods.build_model(config)
  init = methods.init_variables(model, method, config)
  trainable, _ = methods_base.split_params(init["params"], method.trainable)
  assert res["trainable_params"] == sum(x.size for x in methods_base.flatten(trainable).values())
  # The exported model carries the trained adapters and the BatchNorm running statistics of the two steps.
  _, _, _, loaded = methods.load_model_dir(workdir)
  flat = methods_base.flatten(loaded["params"])
  assert any(not np.array_equal(flat[k], v) for k, v in methods_base.flatten(trainable).items() if "/adapter/" in k)
  bn = loaded["batch_stats"]["head_bn"]
  assert np.any(bn["mean"] != 0) and np.any(bn["var"] != 1)
  return res


def test_config_file_documents_commands_and_builds_valid_configs():
  module, config = _config_file("task=vtab/dtd")
  config_lib.validate(config)
  assert config.method.name == "sparse_tuning" and config.method.dense_adapter == "paper"
  assert config.model.init == "weights/ViT-B_16.npz" and config.model.head_init_std == 0.01
  assert config.optim.lr == 1e-3 and config.optim.wd == 1e-4 and config.train.batch_size == 64
  assert "--config=configs/sparse_tuning_vtab.py" in module.__doc__ and "prints" in module.__doc__
  assert "configs/sparse_tuning_vtab.py:demo" in module.__doc__ and "DyT" in module.__doc__
  complete = _config_file("task=cifar100,complete,released")[1]
  config_lib.validate(complete)
  assert complete.method.dense_adapter == "released" and complete.dataset.augment == "inception_crop"
  assert (complete.dataset.mixup, complete.dataset.cutmix, complete.dataset.label_smoothing) == (0.8, 1.0, 0.1)
  assert (complete.optim.lr, complete.optim.wd, complete.train.warmup_epochs) == (5e-4, 0.0, 20)
  demo = _config_file("demo")[1]
  config_lib.validate(demo)
  model, _ = methods.build_model(demo)  # the demo's sparse blocks fit its 4-block model
  assert demo.dataset.name == "demo/digits" and demo.model.init == ""


def test_two_steps_on_mocked_vtab(fast_compile, tmp_path):
  config = _shrink(_config_file("task=vtab/dtd")[1])
  config.dataset.update(split="train800val200", eval_split="test")
  with tfds_testing.mock_data(num_examples=12):
    train.train_and_evaluate(config, str(tmp_path))
  _check(tmp_path, config, num_eval=12)


@pytest.mark.parametrize("mode", ["released"])
def test_two_steps_on_demo_dataset(mode, fast_compile, tmp_path):
  # Released: group sums after block 2 (e + a0 + a1 + a2); token selection at block 3, after the group.
  config = _shrink(_config_file("demo")[1], depth=4, dense_adapter=mode, sparse_blocks=(3,))
  res = train.train_and_evaluate(config, str(tmp_path))
  assert res["task"] == "demo/digits"
  _check(tmp_path, config, num_eval=res["num_eval_examples"])
