"""The accuracy-vs-GMACs curve command and the budget knobs (MET, DyT, Sparse-Tuning)."""

import csv
import os

import jax
import pytest

from vit_adapt import config_lib, curve, methods
from vit_adapt.errors import UserError
from vit_adapt.methods import base


def _save(tmp_path, method, name, **fields):
  c, _ = config_lib.make_config(method, "demo")
  c.model.update(variant="mu/4", image_size=16, depth=4)
  c.method.update(fields)
  c.eval.batch_size = 128
  model, m = methods.build_model(c)
  variables = methods.init_variables(model, m, c)
  params = base.flatten(variables["params"])
  key = jax.random.PRNGKey(0)
  for p in sorted(params):
    if p.endswith(("head/kernel", "up/kernel")):
      key, sub = jax.random.split(key)
      params[p] = jax.random.normal(sub, params[p].shape) * 0.3
  d = str(tmp_path / name)
  methods.save_model_dir(d, c, {**variables, "params": base.unflatten(params)})
  return d


def test_met_curve_csv_png_and_knob(tmp_path):
  d = _save(tmp_path, "met", "met", exits=(1, 2, 3, 4), num_buckets=4)
  out = str(tmp_path / "plots" / "curve")
  rows = curve.run([d], out, values=(0.4, 0.7, 1.0), split="test", calib_split="test")
  assert os.path.getsize(out + ".png") > 5000
  with open(out + ".csv") as f:
    table = list(csv.DictReader(f))
  assert [r["kind"] for r in table] == ["sweep"] * 3 + ["exit"] * 4
  sweep = [r for r in rows if r["kind"] == "sweep"]
  exits = [r for r in rows if r["kind"] == "exit"]
  full = exits[-1]["gmacs"]
  for r in sweep:  # calibrated on the evaluated split: the budget is met
    assert r["gmacs"] == pytest.approx(r["value"] * full, rel=0.02)
  assert sweep[-1]["accuracy"] == pytest.approx(exits[-1]["accuracy"])  # budget 1.0 = the last exit
  assert float(table[0]["gmacs"]) == pytest.approx(sweep[0]["gmacs"], rel=1e-5)

  # The fast sweep equals building the calibrated model and running its early-exit inference.
  config, model, _, variables = methods.load_model_dir(d)
  ctx = base.KnobContext(config, model, variables, "test", "test", 128)
  knob = methods.get("met").budget_knob
  real = curve.evaluate_at(ctx, knob, 0.7)
  assert real["gmacs"] == pytest.approx(sweep[1]["gmacs"], rel=1e-5)
  assert real["accuracy"] == pytest.approx(sweep[1]["accuracy"], abs=1e-9)


def test_dyt_and_sparse_tuning_knobs(tmp_path):
  dyt = _save(tmp_path, "dyt", "dyt")
  st = _save(tmp_path, "sparse_tuning", "st", sparse_blocks=(1, 2))
  out = str(tmp_path / "cmp")
  rows = curve.run([dyt, st], out, values=(0.25, 1.0), split="test", labels=("DyT", "ST"))
  for label in ("DyT", "ST"):
    r = [x for x in rows if x["label"] == label]
    assert len(r) == 2 and r[0]["gmacs"] < r[1]["gmacs"]
    assert all(0.0 <= x["accuracy"] <= 1.0 for x in r)
  assert os.path.exists(out + ".png")


def test_method_without_knob(tmp_path):
  d = _save(tmp_path, "adapter", "adapter")
  with pytest.raises(UserError, match="no budget knob"):
    curve.run([d], str(tmp_path / "x"))
