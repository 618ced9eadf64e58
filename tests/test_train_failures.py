"""Failures a run must survive or report well: a NaN loss (stop, name the step, never checkpoint NaNs), a corrupt
latest checkpoint (report it, resume from the previous one), missing weights or data on the real configs (one
message: what is missing, where to get it, which flag), and user errors at the command line (exit 2, no
traceback)."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from vit_adapt import config_lib, train
from vit_adapt.errors import UserError
from vit_adapt.methods import base as methods_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("every,message", [
    (1, r"parameters are NaN/inf after step 1"),  # the update of step 1 diverged: caught before saving
    (2, r"loss is nan at step 2"),               # the loss of step 2 is NaN: caught at the next fetch
])
def test_nan_stops_the_run_naming_the_step_and_writes_no_checkpoint(tiny_config, fast_compile, tmp_path, every,
                                                                    message, monkeypatch):
  config = tiny_config("adapter", train=dict(steps=4, checkpoint_every_steps=every, log_every_steps=10))
  config.optim.lr = float("nan")
  # A NaN learning rate is refused by config validation before any work; skip that check to make the run diverge.
  monkeypatch.setattr(config_lib, "check_ranges", lambda config: None)
  with pytest.raises(UserError, match=message):
    train.train_and_evaluate(config, str(tmp_path))
  steps = ocp.CheckpointManager(os.path.join(tmp_path, "checkpoints")).all_steps()
  assert list(steps) == []
  assert not os.path.exists(os.path.join(tmp_path, "results.json"))


def _final_params(workdir):
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "6", "state"))
  return methods_base.flatten(state["params"])


def test_corrupt_latest_checkpoint_is_reported_and_the_previous_one_used(tiny_config, fast_compile, tmp_path,
                                                                          capsys):
  config = tiny_config("lora", train=dict(steps=6, checkpoint_every_steps=2, keep_checkpoints=0))
  first = train.train_and_evaluate(config, str(tmp_path))
  reference = _final_params(tmp_path)
  # Damage every data file of the last step (what a truncated copy or a bad disk leaves).
  for path in glob.glob(os.path.join(tmp_path, "checkpoints", "6", "state", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        f.truncate(max(os.path.getsize(path) // 3, 1))
  capsys.readouterr()
  again = train.train_and_evaluate(config, str(tmp_path))
  assert "checkpoint step 6" in capsys.readouterr().out
  assert glob.glob(os.path.join(tmp_path, "checkpoints.corrupt", "6-*"))
  # Resumed from step 4 and re-trained 5 and 6 into the same parameters.
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    logged = [row["step"] for row in map(json.loads, f) if "train/loss" in row]
  assert logged == [1, 2, 3, 4, 5, 6, 5, 6]
  retrained = _final_params(tmp_path)
  for k in reference:
    np.testing.assert_array_equal(reference[k], retrained[k], err_msg=k)
  assert again["top1"] == first["top1"] and again["eval_loss"] == first["eval_loss"]


def _real_config(name, arg):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", ["adapter_vtab", "full_vtab"])
def test_missing_weights_and_unprepared_data_give_one_actionable_message(name, tmp_path):
  config = _real_config(name, "task=vtab/dtd")
  config.model.init = str(tmp_path / "weights" / "ViT-B_16.npz")
  config.dataset.data_dir = str(tmp_path / "tfds")
  os.makedirs(config.dataset.data_dir)
  with pytest.raises(UserError) as e:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  msg = str(e.value)
  for needle in ("ViT-B_16.npz' does not exist", "docs/checkpoints.md", "--config.model.init",
                 "not prepared", "python -m vit_adapt.data.prepare --task=vtab/dtd", "--config.dataset.data_dir"):
    assert needle in msg, (needle, msg)


def test_cli_reports_user_errors_without_traceback(tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  cmd = [sys.executable, "-m", "vit_adapt.main", "--config=configs/adapter_vtab.py:task=vtab/dtd",
         f"--workdir={tmp_path}", f"--config.model.init={tmp_path}/nope.npz",
         f"--config.dataset.data_dir={tmp_path}"]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  assert "error: cannot start training" in done.stderr and "nope.npz' does not exist" in done.stderr
  assert "Traceback" not in done.stderr
  bad_arg = subprocess.run(cmd[:3] + ["--config=configs/adapter_vtab.py:tsak=vtab/dtd"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
  assert bad_arg.returncode != 0 and "'tsak'" in bad_arg.stderr and "Traceback" not in bad_arg.stderr
