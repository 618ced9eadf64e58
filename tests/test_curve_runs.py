"""`curve --runs`: one point per model trained in a sweep (DyT's paper protocol), beside a knob's curve."""

import json
import os

import pytest

from vit_adapt import curve
from vit_adapt.errors import UserError


def _run(root, name, rate, gmacs, top1):
  d = os.path.join(root, name)
  os.makedirs(d)
  with open(os.path.join(d, "results.json"), "w") as f:
    json.dump({"method": "dyt", "gmacs_per_image": gmacs, "top1": top1}, f)
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump({"method": {"name": "dyt", "target_rate": rate}}, f)


def test_trained_points_read_each_run_and_its_setting(tmp_path):
  _run(tmp_path, "a/target_rate=0.3", 0.3, 0.021, 0.70)
  _run(tmp_path, "a/target_rate=0.9", 0.9, 0.030, 0.84)
  rows = curve.trained_points(str(tmp_path), "method.target_rate")
  assert [(r["value"], r["gmacs"], r["accuracy"], r["kind"]) for r in rows] == [
      (0.3, 0.021, 0.70, "trained"), (0.9, 0.030, 0.84, "trained")]
  assert rows[0]["label"] == "dyt: one model per method.target_rate" and rows[0]["detail"] == "a/target_rate=0.3"
  curve.write_csv(rows, str(tmp_path / "c.csv"))
  curve.plot(rows, str(tmp_path / "c.png"))
  assert os.path.getsize(tmp_path / "c.png") > 0
  with open(tmp_path / "c.csv") as f:
    assert f.read().splitlines()[1].startswith("dyt,dyt: one model per method.target_rate,trained,method.target_rate,0.3")


def test_trained_points_name_what_is_missing(tmp_path):
  with pytest.raises(UserError, match="no results.json"):
    curve.trained_points(str(tmp_path), "method.target_rate")
  _run(tmp_path, "r", 0.5, 0.02, 0.8)
  with pytest.raises(UserError, match="has no field 'method.capacity'"):
    curve.trained_points(str(tmp_path), "method.capacity")
