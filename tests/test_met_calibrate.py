"""MET threshold calibration: exact exit distributions, GMACs budgets, thresholds saved into the model directory."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from vit_adapt import tasks
from vit_adapt import config_lib, methods
from vit_adapt.train import evaluate
from vit_adapt.methods.met import calibrate as met_calibrate
from vit_adapt.train import mesh as mesh_lib
from vit_adapt.data import pipeline
from vit_adapt.errors import UserError
from vit_adapt.methods import base


def test_distribution_realised_exactly():
  rng = np.random.default_rng(0)
  conf = rng.uniform(size=(4, 500))
  for p in ([0.4, 0.3, 0.2, 0.1], [0.0, 0.5, 0.0, 0.5], [1.0, 0, 0, 0], [0, 0, 0, 1.0]):
    th = met_calibrate.thresholds_for_distribution(conf, p)
    idx = met_calibrate.exits_taken(conf, th)
    np.testing.assert_array_equal(np.bincount(idx, minlength=4), np.round(500 * np.asarray(p)).astype(int))
  np.testing.assert_allclose(met_calibrate.geometric(0.5, 3), [4 / 7, 2 / 7, 1 / 7])


def test_budget_met_within_two_percent():
  rng = np.random.default_rng(1)
  conf = rng.beta(2, 1, size=(5, 300))
  costs = (5.93, 8.84, 11.75, 14.66, 17.56)
  for frac in (0.36, 0.5, 0.6, 0.8, 0.95):
    th, q = met_calibrate.thresholds_for_budget(conf, costs, frac * costs[-1])
    got = met_calibrate.average_cost(met_calibrate.exits_taken(conf, th), costs)
    assert got == pytest.approx(frac * costs[-1], rel=0.02)
  with pytest.raises(UserError, match="outside"):
    met_calibrate.thresholds_for_budget(conf, costs, 0.2 * costs[-1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  c, _ = config_lib.make_config("met", "demo")
  c.model.update(variant="mu/4", image_size=16, depth=4)
  c.method.update(exits=(1, 2, 3, 4), num_buckets=4)
  c.eval.batch_size = 128
  model, method = methods.build_model(c)
  params = base.flatten(methods.init_variables(model, method, c)["params"])
  key = jax.random.PRNGKey(0)
  for name in sorted(params):  # an untrained model with spread-out confidences
    if name.endswith(("head/kernel", "up/kernel")):
      key, sub = jax.random.split(key)
      params[name] = jax.random.normal(sub, params[name].shape) * 0.3
  d = tmp_path_factory.mktemp("met") / "model"
  methods.save_model_dir(str(d), c, {"params": base.unflatten(params)})
  return str(d)


def test_calibrated_model_meets_budget_on_calibration_split(model_dir):
  table = met_calibrate.calibrate(model_dir, split="test", budget=0.6)
  full = table["exit_gmacs"][-1]
  assert table["avg_gmacs"] == pytest.approx(0.6 * full, rel=0.02)
  assert sum(table["exit_fraction"]) == pytest.approx(1.0)
  assert sum(f > 0 for f in table["exit_fraction"]) >= 3
  # Saved next to the checkpoint: the reloaded model early-exits with them through its own inference path.
  config, model, method, variables = methods.load_model_dir(model_dir)
  assert tuple(config.method.thresholds) == pytest.approx(table["thresholds"])
  assert model.thresholds == tuple(config.method.thresholds) and "budget" in config.method.calibration
  config_lib.validate(config)
  mesh = mesh_lib.make_mesh()
  result = evaluate.Evaluator(model, method, tasks.for_config(config), mesh)(
      variables, pipeline.eval_batches(config, "test"))
  assert result["stats"]["gmacs"] == pytest.approx(0.6 * full, rel=0.02)
  assert result["top1"] == pytest.approx(table["accuracy"], abs=1e-9)
  # The mean exit index of the real early-exit pass matches the calibration table's exit shares.
  assert result["stats"]["exit"] == pytest.approx(np.dot(np.arange(4), table["exit_fraction"]), abs=1e-9)


def test_calibration_errors(model_dir):
  with pytest.raises(UserError, match="exactly one target"):
    met_calibrate.calibrate(model_dir, split="test", write=False)
  with pytest.raises(UserError, match="confidence"):
    met_calibrate.calibrate(model_dir, split="test", q=0.5, confidence="margin", write=False)
  table = met_calibrate.calibrate(model_dir, split="test", q=0.5, confidence="entropy", write=False)
  assert table["confidence"] == "entropy" and len(table["thresholds"]) == 3
  assert all(t <= 0 for t in table["thresholds"])  # minus an entropy


# ----------------------------------------------------------------------------------------------------------
# The calibration split against the training split, through the command line.

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
  env = {**os.environ, "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
         "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  return subprocess.run([sys.executable, "-m", "vit_adapt.met_calibrate", *args], capture_output=True, text=True,
                        env=env, cwd=_ROOT, timeout=600)


def test_training_splits():
  assert {"train800", "val200"} <= met_calibrate.training_splits("train800val200")
  assert "val200" not in met_calibrate.training_splits("train800")
  assert {"train", "val"} <= met_calibrate.training_splits("train+val")
  assert met_calibrate.training_data_warning("test", "train") == ""
  assert "inside the training split" in met_calibrate.training_data_warning("val200", "train800val200")
  # The held-out protocol of configs/met_vtab.py: train on train800, evaluate/calibrate on val200.
  spec = importlib.util.spec_from_file_location("met_vtab", os.path.join(_ROOT, "configs", "met_vtab.py"))
  met_vtab = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(met_vtab)
  c = met_vtab.get_config("task=vtab/dtd")
  c.dataset.update(split="train800", eval_split="val200")
  config_lib.validate(c)
  assert met_calibrate.default_split(c) == "val200"
  assert met_calibrate.training_data_warning(met_calibrate.default_split(c), c.dataset.split) == ""


def test_cli_warns_or_refuses_a_calibration_split_the_model_trained_on(model_dir, tmp_path):
  d = str(tmp_path / "model")
  shutil.copytree(model_dir, d)  # the demo model trained on 'train', the default calibration split outside VTAB
  r = _cli(f"--checkpoint={d}", "--budget=0.6", "--require_held_out")
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert "error: " in r.stderr and "inside the training split 'train'" in r.stderr and "--split" in r.stderr
  before = open(os.path.join(d, "config.json")).read()

  r = _cli(f"--checkpoint={d}", "--budget=0.6")
  assert r.returncode == 0, r.stderr[-2000:]
  warnings = [line for line in r.stdout.splitlines() if line.startswith("warning: ")]
  assert len(warnings) == 1 and "'train'" in warnings[0] and "val200" in warnings[0]
  after = open(os.path.join(d, "config.json")).read()
  assert after != before
  record = json.loads(after)["method"]["calibration"]
  assert "; warning: calibrating on 'train'" in record
  assert json.load(open(os.path.join(d, "calibration.json")))["warning"]

  r = _cli(f"--checkpoint={d}", "--budget=0.6", "--split=test", "--require_held_out")
  assert r.returncode == 0, r.stderr[-2000:]
  assert not [line for line in r.stdout.splitlines() if line.startswith("warning")]  # (the replaced record has one)
  assert "warning" not in json.load(open(os.path.join(d, "config.json")))["method"]["calibration"]
