"""Exact resume: a run killed with SIGKILL mid-training and started again with the same command ends with
bitwise the same parameters and metrics as an uninterrupted run (CPU)."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
BLOCKS = {"train": {"steps": 8, "checkpoint_every_steps": 3, "keep_checkpoints": 0}}


def run_worker(spec: dict) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, WORKER, json.dumps(spec)], capture_output=True, text=True, timeout=600)


def final_state(workdir: str):
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "8", "state"))
  leaves = jax.tree_util.tree_leaves_with_path({k: state[k] for k in ("params", "opt_state", "rng", "step")})
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def results(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    r = json.load(f)
  return {k: r[k] for k in ("top1", "eval_loss", "final_train_loss", "num_eval_examples")}


def train_losses(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row["train/loss"] for row in map(json.loads, f) if "train/loss" in row}


def test_sigkill_mid_training_then_rerun_matches_uninterrupted_run(tmp_path):
  clean, killed = str(tmp_path / "clean"), str(tmp_path / "killed")
  done = run_worker({"workdir": clean, "blocks": BLOCKS})
  assert done.returncode == 0, done.stderr[-3000:]

  died = run_worker({"workdir": killed, "blocks": BLOCKS, "kill_before_step": 6})
  assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
  assert not os.path.exists(os.path.join(killed, "results.json"))
  assert ocp.CheckpointManager(os.path.join(killed, "checkpoints")).all_steps() == [3]  # mid-training

  resumed = run_worker({"workdir": killed, "blocks": BLOCKS})
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  with open(os.path.join(killed, "metrics.jsonl")) as f:
    logged = [row["step"] for row in map(json.loads, f) if "train/loss" in row]
  # Steps 1-5 ran before the kill; the restart resumed from the step-3 checkpoint and re-ran 4 and 5.
  assert logged == [1, 2, 3, 4, 5, 4, 5, 6, 7, 8]

  a, b = final_state(clean), final_state(killed)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert results(clean) == results(killed)
  # Steps 4 and 5 ran twice in the killed workdir (before the kill and after the restart) and agree too.
  assert train_losses(clean) == train_losses(killed)
