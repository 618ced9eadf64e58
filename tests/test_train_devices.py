"""Data parallelism: the same run on a 1-device and a 4-device CPU mesh gives the same loss curve."""

import json
import os
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")


def losses(tmp_path, devices: int) -> tuple[list, dict]:
  workdir = str(tmp_path / f"d{devices}")
  # Dropout on (the adapter's): the per-step keys must not depend on how the batch is split.
  spec = {"workdir": workdir, "devices": devices, "method": "adapter",
          "blocks": {"train": {"steps": 6, "batch_size": 16}, "eval": {"batch_size": 40}}}
  done = subprocess.run([sys.executable, os.path.join(WORKER), json.dumps(spec)], capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [r for r in map(json.loads, f) if "train/loss" in r]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["num_devices"] == devices
  return [r["train/loss"] for r in rows], results


def test_one_and_four_devices_give_the_same_loss_curve(tmp_path):
  one, r1 = losses(tmp_path, 1)
  four, r4 = losses(tmp_path, 4)
  assert len(one) == len(four) == 6
  assert len(set(np.round(one, 4))) > 1  # the loss moves: the comparison is not of constants
  np.testing.assert_allclose(four, one, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(r4["eval_loss"], r1["eval_loss"], rtol=2e-5)
  assert r4["num_eval_examples"] == r1["num_eval_examples"] == 360
