"""What every end-to-end run must leave in its workdir (shared by test_train_e2e_*.py)."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from vit_adapt import methods
from vit_adapt.methods import base as methods_base

BASELINES = ("linear", "full", "adapter", "lora", "vpt")
RESULT_KEYS = {"task", "method", "top1", "trainable_params", "gmacs_per_image", "peak_train_memory_bytes",
               "batch_size", "dtype", "device", "wall_time_s", "eval_loss", "num_eval_examples"}


def vtab_config(tiny_config, method, **dataset):
  c = tiny_config(method, "task=vtab/dtd")
  c.dataset.update(split="train800val200", eval_split="test", **dataset)
  c.eval.batch_size = 8
  return c


def check_run(workdir, config, results, num_eval):
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
  _, _, _, loaded = methods.load_model_dir(workdir)
  flat = methods_base.flatten(loaded["params"])
  for k, v in methods_base.flatten(frozen).items():
    np.testing.assert_array_equal(flat[k], v)
  for k, v in methods_base.flatten(state["params"]).items():
    np.testing.assert_array_equal(flat[k], v)
  assert any(not np.array_equal(flat[k], v) for k, v in methods_base.flatten(trainable).items())


