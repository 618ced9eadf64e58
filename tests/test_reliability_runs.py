"""A workdir is one run (docs/reliability.md): resuming under another config is refused (or moved aside with
--restart), a restore is all or nothing, a workdir is locked while a run trains in it, nothing is written before
the inputs are checked, a full disk is one message, and re-running a finished run keeps its results whole."""

import errno
import glob
import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from vit_adapt import train
from vit_adapt.errors import UserError
from vit_adapt.models import params as params_lib
from vit_adapt.sweep import grid as sweep_grid
from vit_adapt.sweep import runner as sweep_runner
from vit_adapt.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = "configs/adapter_vtab.py:demo"


def _cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "vit_adapt.main", *args], cwd=cwd, capture_output=True, text=True,
                        timeout=600)


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_resume_under_another_config_is_refused_naming_the_keys(tiny_config, fast_compile, tmp_path):
  config = tiny_config("adapter", train=dict(steps=4, checkpoint_every_steps=2))
  first = train.train_and_evaluate(config, str(tmp_path))
  before = {n: open(os.path.join(tmp_path, n)).read() for n in ("config.json", "results.json")}
  other = tiny_config("adapter", train=dict(steps=4, checkpoint_every_steps=2))
  other.optim.lr, other.seed = 0.01, 3
  with pytest.raises(UserError, match=r"holds another run.*optim\.lr: 0\.001 -> 0\.01.*seed: 0 -> 3.*--restart"):
    train.train_and_evaluate(other, str(tmp_path))
  assert before == {n: open(os.path.join(tmp_path, n)).read() for n in before}  # nothing overwritten
  # Cosmetic fields (logging, checkpoint cadence, efficiency, data paths) do not make another run.
  same = tiny_config("adapter", train=dict(steps=4, checkpoint_every_steps=3, log_every_steps=5))
  again = train.train_and_evaluate(same, str(tmp_path))
  assert again["top1"] == first["top1"] and again["run_fingerprint"] == first["run_fingerprint"]
  # --restart moves the old run aside, whole, and trains the new one.
  third = train.train_and_evaluate(other, str(tmp_path), restart=True)
  aside = glob.glob(f"{tmp_path}.replaced-*")
  assert len(aside) == 1 and _read(os.path.join(aside[0], "results.json"))["seed"] == 0
  assert third["seed"] == 3 and _read(os.path.join(tmp_path, "results.json"))["seed"] == 3


def test_cli_refuses_another_run_with_exit_2(tiny_config, fast_compile, tmp_path):
  train.train_and_evaluate(tiny_config("adapter", train=dict(steps=2, checkpoint_every_steps=2)), str(tmp_path))
  proc = _cli(f"--config={DEMO}", f"--workdir={tmp_path}", "--config.optim.lr=0.01")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "error: the workdir" in proc.stderr and "optim.lr" in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_does_not_skip_results_of_another_config(tmp_path):
  run = sweep_grid.Run(name="demo/adapter_vtab/lr=0.01", task="demo/digits", config=DEMO,
                       config_label="adapter_vtab", point={}, overrides={"optim.lr": 0.01})
  runner = sweep_runner.Runner.__new__(sweep_runner.Runner)  # only is_done/run_dir are exercised
  runner.workdir = str(tmp_path)
  os.makedirs(runner.run_dir(run))
  results = os.path.join(runner.run_dir(run), "results.json")
  with open(results, "w") as f:
    json.dump({"top1": 0.5, "run_fingerprint": "another-run"}, f)
  assert not runner.is_done(run)
  with open(results, "w") as f:
    json.dump({"top1": 0.5, "run_fingerprint": workdir_lib.fingerprint(run.load_config())}, f)
  assert runner.is_done(run)


def _params(workdir, step):
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return params_lib.flatten(state["params"])


def test_with_every_checkpoint_corrupt_the_run_is_exactly_a_fresh_one(tiny_config, fast_compile, tmp_path, capsys):
  config = tiny_config("lora", train=dict(steps=4, checkpoint_every_steps=2, keep_checkpoints=0))
  damaged, fresh = str(tmp_path / "damaged"), str(tmp_path / "fresh")
  train.train_and_evaluate(config, damaged)
  for path in glob.glob(os.path.join(damaged, "checkpoints", "*", "state", "**", "*"), recursive=True):
    if os.path.isfile(path):  # the state of every step unreadable; the data iterator's part intact
      with open(path, "r+b") as f:
        f.truncate(max(os.path.getsize(path) // 3, 1))
  capsys.readouterr()
  again = train.train_and_evaluate(config, damaged)
  out = capsys.readouterr().out
  assert "falling back to the previous checkpoint" in out and "no earlier checkpoint: the run starts from scratch" in out
  reference = train.train_and_evaluate(config, fresh)
  assert (again["top1"], again["eval_loss"]) == (reference["top1"], reference["eval_loss"])
  a, b = _params(damaged, 4), _params(fresh, 4)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_workdir_in_use_is_refused_and_a_dead_holder_does_not_block(tiny_config, fast_compile, tmp_path):
  config = tiny_config("adapter")
  lock = workdir_lib.Lock(str(tmp_path))
  try:
    with pytest.raises(UserError, match=rf"in use by pid {os.getpid()} on .* since"):
      train.train_and_evaluate(config, str(tmp_path))
    proc = _cli(f"--config={DEMO}", f"--workdir={tmp_path}")
    assert proc.returncode == 2 and f"in use by pid {os.getpid()}" in proc.stderr, proc.stderr[-2000:]
  finally:
    lock.release()
  # The lock file stays (with the old holder's line) but its flock died with its holder: it does not block.
  assert os.path.isfile(os.path.join(tmp_path, workdir_lib.LOCK_FILE))
  assert train.train_and_evaluate(config, str(tmp_path))["steps"] == 2


def test_nothing_is_written_before_the_inputs_are_checked(tmp_path):
  workdir = tmp_path / "run"
  proc = _cli(f"--config={DEMO}", f"--workdir={workdir}", f"--config.model.init={tmp_path / 'missing.npz'}")
  assert proc.returncode == 2 and "cannot start training" in proc.stderr, proc.stderr[-2000:]
  assert not workdir.exists()
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  proc = _cli(f"--config={DEMO}", f"--workdir={blocker / 'run'}")
  assert proc.returncode == 2 and "cannot write in the workdir" in proc.stderr, proc.stderr[-2000:]


def test_a_full_disk_while_checkpointing_is_one_message(tiny_config, fast_compile, tmp_path, monkeypatch):
  def full(*args, **kwargs):
    raise RuntimeError("orbax save failed") from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  config = tiny_config("adapter", train=dict(steps=2, checkpoint_every_steps=1))
  with pytest.raises(UserError, match=r"could not write the checkpoint of step 1 .*No space left on device.*resumes"):
    train.train_and_evaluate(config, str(tmp_path))


def test_rerunning_a_finished_run_keeps_its_results_whole(tiny_config, fast_compile, tmp_path):
  config = tiny_config("adapter", train=dict(steps=2, checkpoint_every_steps=2))
  first = train.train_and_evaluate(config, str(tmp_path))
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again["final_train_loss"] == first["final_train_loss"] is not None
  assert again["wall_time_s"] > first["wall_time_s"]  # the time of both processes of the run
  assert _read(os.path.join(tmp_path, workdir_lib.RUN_FILE))["wall_time_s"] == pytest.approx(again["wall_time_s"])


def test_fields_added_by_an_upgrade_do_not_split_a_run(tiny_config, fast_compile, tmp_path):
  """A workdir whose recorded identity predates a config field resumes; a model directory saved before a
  method field existed loads with the value it ran with (`Method.legacy`)."""
  from vit_adapt import methods
  config = tiny_config("dyt", train=dict(steps=2, checkpoint_every_steps=2))
  train.train_and_evaluate(config, str(tmp_path))
  run_file = os.path.join(tmp_path, workdir_lib.RUN_FILE)
  record = _read(run_file)
  del record["identity"]["method.attention_keys"]  # as written before the field existed
  with open(run_file, "w") as f:
    json.dump(record, f)
  assert train.train_and_evaluate(config, str(tmp_path))["steps"] == 2
  stored = os.path.join(tmp_path, "model", "config.json")
  old = _read(stored)
  del old["method"]["attention_keys"], old["method"]["moe_gate_input"]
  with open(stored, "w") as f:
    json.dump(old, f)
  loaded, model, _, _ = methods.load_model_dir(str(tmp_path))
  assert loaded.method.attention_keys == "all" and loaded.method.moe_gate_input == "block_input"
