"""Frozen-feature sharing (vit_adapt.shared_features) equals separate trainer runs, on the real data pipeline."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vit_adapt import methods
from vit_adapt.sweep import shared_features
from vit_adapt.sweep import grid as sweep_grid
from vit_adapt import train
from vit_adapt.data import pipeline

CONFIG = "configs/linear_vtab.py:demo"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def _cwd():
  old = os.getcwd()
  os.chdir(ROOT)  # config paths are relative to the repository root, as on the command line
  yield
  os.chdir(old)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
  """A tiny pre-trained-like backbone (random, saved once) so the features do not depend on the run's seed."""
  d = str(tmp_path_factory.mktemp("backbone") / "model")
  config = sweep_grid.load_config(CONFIG, {"model.depth": 1, "model.variant": "mu/8"})
  model, method = methods.build_model(config)
  variables = methods.init_variables(model, method, config.copy_and_resolve_references())
  methods.save_model_dir(d, config, dict(variables))
  return d


def _overrides(backbone_dir, **kw):
  base = {"model.depth": 1, "model.variant": "mu/8", "model.init": backbone_dir, "model.head_init_std": 0.02,
          "train.steps": 7, "train.batch_size": 48, "train.log_every_steps": 3, "train.checkpoint_every_steps": 0,
          "eval.batch_size": 100, "efficiency.enabled": False, "dataset.label_smoothing": 0.1,
          "dataset.num_threads": 2}
  base.update(kw)
  return base


def _final_state(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = mngr.latest_step()
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  return step, restored.state


def test_batch_order_matches_train_iterator():
  """The index stream reproduces the trainer's batches across epoch boundaries (labels compared)."""
  config = sweep_grid.load_config(CONFIG, {"train.batch_size": 500, "model.variant": "Ti/8",
                                                "dataset.num_threads": 2})
  feats_labels = pipeline.eval_batches(config, config.dataset.split, process_index=0, process_count=1)
  labels = np.concatenate([np.asarray(b["label"])[np.asarray(b["mask"])] for b in feats_labels])
  n = pipeline.num_examples(config)
  rows = pipeline.example_order(n, config.train.batch_size, seed=3, steps=4)  # 2000 > 1437: crosses an epoch
  it = pipeline.train_iterator(config, seed=3)
  for t in range(4):
    np.testing.assert_array_equal(next(it)["label"], labels[rows[t]])
  assert sorted(rows.reshape(-1)[:n]) == list(range(n))  # the first epoch is a permutation


def test_shared_equals_separate_runs(tmp_path, backbone_dir, fast_compile):
  points = [{"optim.lr": 0.01, "seed": 0}, {"optim.lr": 0.01, "seed": 1}, {"optim.lr": 0.003, "seed": 0}]
  specs = [{"name": f"r{i}", "config": CONFIG, "overrides": _overrides(backbone_dir, **p),
            "workdir": str(tmp_path / "shared" / f"r{i}")} for i, p in enumerate(points)]
  configs = [sweep_grid.load_config(s["config"], s["overrides"]) for s in specs]
  assert len({shared_features.feature_key(c) for c in configs}) == 1
  assert all(shared_features.ineligible_reason(c) is None for c in configs)

  shared = shared_features.train_group(specs, str(tmp_path / "group"))
  assert len(shared) == 3
  assert os.path.isfile(tmp_path / "group" / "features_train.npz")
  for i, (spec, config) in enumerate(zip(specs, configs)):
    separate = train.train_and_evaluate(config, str(tmp_path / "separate" / f"r{i}"))
    ours = shared[i]
    assert ours["seed"] == separate["seed"] and ours["steps"] == separate["steps"] == 7
    assert ours["top1"] == separate["top1"]
    assert ours["mean_per_class_accuracy"] == pytest.approx(separate["mean_per_class_accuracy"])
    assert ours["num_eval_examples"] == separate["num_eval_examples"]
    np.testing.assert_allclose(ours["eval_loss"], separate["eval_loss"], rtol=1e-5)
    assert ours["trainable_params"] == separate["trainable_params"]
    assert ours["gmacs_per_image"] == pytest.approx(separate["gmacs_per_image"])
    step_a, a = _final_state(spec["workdir"])
    step_b, b = _final_state(str(tmp_path / "separate" / f"r{i}"))
    assert step_a == step_b == 7
    for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
  # The seeds and learning rates really gave different heads (the comparison above is not vacuous).
  heads = [_final_state(s["workdir"])[1]["params"]["head"]["kernel"] for s in specs]
  assert not np.allclose(heads[0], heads[1]) and not np.allclose(heads[0], heads[2])
  # Re-running the group finds every run done.
  assert shared_features.train_group(specs, str(tmp_path / "group")) == []


def test_plan_groups_and_eligibility(backbone_dir):
  refs = [sweep_grid.ConfigRef.parse("configs/linear_vtab.py:demo"),
          sweep_grid.ConfigRef.parse("configs/adapter_vtab.py:demo")]
  axes = sweep_grid.parse_grid("optim.lr=[0.01,0.003];seed=[0,1]")
  runs = sweep_grid.expand(refs, [], axes, {"model.init": backbone_dir, "model.depth": 1})
  groups = shared_features.plan_groups(runs)
  assert [sorted(r.name for r in g) for g in groups] == [sorted(r.name for r in runs if "linear" in r.name)]
  # A random backbone (no model.init) is drawn from the seed: runs share features only within a seed.
  runs = sweep_grid.expand(refs[:1], [], axes, {"model.depth": 1})
  groups = shared_features.plan_groups(runs)
  assert sorted(len(g) for g in groups) == [2, 2]
  assert all(len({r.point["seed"] for r in g}) == 1 for g in groups)
  # Augmentation makes the training features differ from step to step: not eligible.
  config = sweep_grid.load_config(CONFIG, {"dataset.augment": "flip"})
  assert "augmented" in shared_features.ineligible_reason(config)
