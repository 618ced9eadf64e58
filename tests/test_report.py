"""vit_adapt.report on a synthetic sweep directory (results.json files in the sweep layout)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vit_adapt.sweep import report
from vit_adapt.sweep import grid as sweep_grid
from vit_adapt.sweep import state as sweep_state
from vit_adapt.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(root, task, label, point, top1, **extra):
  name = ",".join(f"{k}={v}" for k, v in point.items()) or "default"
  d = os.path.join(root, task, label, name)
  os.makedirs(d, exist_ok=True)
  res = dict(task=task, method=label.split("_")[0], top1=top1, trainable_params=100_000, gmacs_per_image=17.56,
             throughput_images_per_s=250.0, batch_size=64, dtype="bfloat16", device="1x H100 (gpu)",
             seed=point.get("seed", 0))
  res.update(extra)
  with open(os.path.join(d, "results.json"), "w") as f:
    json.dump(res, f)
  return d


@pytest.fixture
def sweep_dir(tmp_path):
  root = str(tmp_path / "sweep")
  # linear: every VTAB task, two seeds; dyt: two keep rates (a budget knob), one task, one seed.
  for i, task in enumerate(sweep_grid.VTAB_TASKS):
    for seed in (0, 1):
      _write(root, task, "linear_vtab", {"seed": seed}, 0.5 + 0.01 * i + 0.02 * seed, trainable_params=50_000)
  _write(root, "vtab/dtd", "dyt_vtab", {"method.keep": 0.5, "seed": 0}, 0.70,
         gmacs_per_image=12.0)
  _write(root, "vtab/dtd", "dyt_vtab", {"method.keep": 0.9, "seed": 0}, 0.74, gmacs_per_image=15.5)
  return root


def test_table_layout_means_and_missing_cells(sweep_dir):
  rep = report.make_report(sweep_dir)
  table = {t["label"]: t for t in rep["table"]}
  assert set(table) == {"linear_vtab", "dyt_vtab [method.keep=0.5]", "dyt_vtab [method.keep=0.9]"}
  assert rep["columns"] == list(sweep_grid.VTAB_TASKS)
  lin = table["linear_vtab"]
  # Per task: mean and sample std over the two seeds, in percent.
  mean, std, n = lin["tasks"]["vtab/cifar100"]
  assert n == 2 and mean == pytest.approx(100 * (0.51 + 0.53) / 2) and std == pytest.approx(100 * 0.02 / np.sqrt(2))
  # Group means over the papers' groups, the mean over 19 tasks and the mean of the group means.
  means = [100 * (0.5 + 0.01 * i + 0.01) for i in range(19)]
  assert lin["groups"]["natural"][0] == pytest.approx(np.mean(means[:7]))
  assert lin["groups"]["specialized"][0] == pytest.approx(np.mean(means[7:11]))
  assert lin["groups"]["structured"][0] == pytest.approx(np.mean(means[11:]))
  assert lin["mean"][0] == pytest.approx(np.mean(means))
  assert lin["group_mean"][0] == pytest.approx(np.mean([np.mean(means[:7]), np.mean(means[7:11]),
                                                        np.mean(means[11:])]))
  assert lin["params_m"] == pytest.approx(0.05)

  md = rep["markdown"].splitlines()
  header = [c.strip() for c in md[0].strip("|").split("|")]
  assert header[1:20] == [t.split("/")[1] for t in sweep_grid.VTAB_TASKS]
  assert header[20:25] == ["Natural", "Specialized", "Structured", "Mean", "Group mean"]
  assert header[25:] == ["Params (M)", "GMACs", "Throughput (img/s)"]
  rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in md[2:5]}
  lin_row = rows["linear_vtab"]
  assert all("±" in c for c in lin_row[1:20]) and "*" not in "".join(lin_row[20:25])
  dyt = rows["dyt_vtab [method.keep=0.5]"]
  assert dyt[3] == "70.0" and dyt[1] == report.DASH and dyt[1:20].count(report.DASH) == 18
  assert dyt[20] == "70.0*" and dyt[21] == report.DASH and dyt[25:] == ["0.100", "12.00", "250.0"]
  assert "measured on 1x H100 (gpu), bfloat16, batch 64" in rep["markdown"]


def test_csv_files(sweep_dir):
  rep = report.make_report(sweep_dir, plots=False)
  with open(os.path.join(sweep_dir, "report", "runs.csv")) as f:
    runs = list(csv.DictReader(f))
  assert len(runs) == 19 * 2 + 2
  assert {r["seed"] for r in runs} == {"0", "1"}
  with open(os.path.join(sweep_dir, "report", "summary.csv")) as f:
    summary = {r["label"]: r for r in csv.DictReader(f)}
  assert summary["linear_vtab"]["vtab/dtd/n"] == "2"
  assert summary["dyt_vtab [method.keep=0.9]"]["vtab/dtd/mean"] == "74.0"
  assert summary["dyt_vtab [method.keep=0.9]"]["vtab/svhn/mean"] == ""
  assert len(rep["files"]) == 3


def test_plots_and_budget_curves(sweep_dir):
  # A budget curve written next to a run (vit_adapt.curve's CSV: one line per budget).
  run = os.path.join(sweep_dir, "vtab", "dtd", "dyt_vtab", "method.keep=0.9,seed=0")
  with open(os.path.join(run, "curve.csv"), "w") as f:
    f.write("method,label,kind,knob,value,gmacs,accuracy,detail\n"
            "dyt,r,sweep,capacity_rate,0.3,8.0,0.61,\ndyt,r,sweep,capacity_rate,0.6,11.0,0.69,\n"
            "dyt,r,exit,exit,1,5.0,0.30,single exit\ndyt,r,sweep,capacity_rate,1.0,17.5,0.75,\n")
  rep = report.make_report(sweep_dir)
  pngs = [p for p in rep["files"] if p.endswith(".png")]
  assert [os.path.basename(p) for p in pngs] == ["accuracy_vs_gmacs.png", "per_task.png"]
  for p in pngs:
    with Image.open(p) as im:
      assert im.size[0] >= 500 and im.size[1] >= 300
      assert np.asarray(im.convert("L")).std() > 5  # something was drawn
  from vit_adapt.sweep import plots as report_plots
  curves = report_plots._row_curves(rep["rows"], sweep_dir)
  assert curves == {"dyt_vtab [method.keep=0.9]": [(8.0, 61.0), (11.0, 69.0), (17.5, 75.0)]}


def test_state_file_labels_and_non_vtab_tasks(tmp_path):
  root = str(tmp_path / "s")
  d = _write(root, "demo/digits", "lora_vtab-demo", {"optim.lr": 0.01, "seed": 3}, 0.9)
  sweep_state.write_json_atomic(os.path.join(root, "sweep_state.json"), {"runs": {
      "demo/digits/lora_vtab-demo/optim.lr=0.01,seed=3": {"point": {"optim.lr": 0.01, "seed": 3},
                                                          "config_label": "lora_vtab-demo"}}})
  rep = report.make_report(root)
  (t,) = rep["table"]
  assert t["label"] == "lora_vtab-demo [optim.lr=0.01]" and rep["columns"] == ["demo/digits"]
  assert rep["rows"][0]["seed"] == 3
  assert "| lora_vtab-demo [optim.lr=0.01] | 90.0 |" in rep["markdown"]
  assert "Natural" not in rep["markdown"]
  assert os.path.isdir(d)


def test_cli(tmp_path, sweep_dir):
  out = subprocess.run([sys.executable, "-m", "vit_adapt.report", sweep_dir, f"--out={tmp_path / 'r'}",
                        "--noplots"], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert "| linear_vtab |" in out.stdout and os.path.isfile(tmp_path / "r" / "table.md")
  out = subprocess.run([sys.executable, "-m", "vit_adapt.report", str(tmp_path / "empty")], cwd=ROOT,
                       capture_output=True, text=True)
  assert out.returncode == 2 and "is not a directory" in out.stderr
  os.makedirs(tmp_path / "empty")
  with pytest.raises(UserError, match="no results.json"):
    report.make_report(str(tmp_path / "empty"))
