"""Multi-host data parallelism on one machine: 2 processes x 2 CPU devices (jax.distributed with a local
coordinator, gloo collectives) train exactly as 1 process x 4 devices fed the same global batches.

Each process feeds its own slice of the global batch (records p::2 of the split, its own shuffle, see
`vit_adapt.data.pipeline.train_iterator`); the reference process feeds the concatenation of both hosts' streams
(`train_worker.py`'s `emulate_hosts`), i.e. what `mesh.global_batch` assembles from the two processes.
"""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vit_adapt.checkpoints import model_dir as model_dir_lib

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
STEPS = 4
BLOCKS = {"train": {"steps": STEPS, "batch_size": 16, "checkpoint_every_steps": 2}, "eval": {"batch_size": 40}}
SHARED = ("config.json", "run.json", "metrics.jsonl", "results.json", ".lock", "model/")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(spec: dict) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, WORKER, json.dumps(spec)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen]) -> list[str]:
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=400)
      assert p.returncode == 0, err[-3000:]
      outs.append(out)
  finally:
    for p in procs:  # one process failing leaves its peer waiting on the coordinator: end it
      if p.poll() is None:
        p.kill()
  return outs


def _line(out: str, tag: str):
  return json.loads(next(line for line in out.splitlines() if line.startswith(tag + " "))[len(tag) + 1:])


def _train_losses(workdir: str) -> list[float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [r for r in map(json.loads, f) if "train/loss" in r]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one writer: no row twice
  return [r["train/loss"] for r in rows]


def _restore_state(path: str):
  ckptr = ocp.StandardCheckpointer()
  metadata = ckptr.metadata(path)
  metadata = getattr(metadata, "item_metadata", metadata)
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # saved over 4 devices of 2 processes: reshard
  return ckptr.restore(path, jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                                          metadata))


def _assert_trees_close(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_all_devices(tmp_path):
  port = _free_port()
  multi, single = str(tmp_path / "2x2"), str(tmp_path / "1x4")
  procs = [_start({"workdir": multi, "devices": 2, "process": {"id": i, "count": 2, "port": port},
                   "record_labels": True, "blocks": BLOCKS}) for i in range(2)]
  procs.append(_start({"workdir": single, "devices": 4, "emulate_hosts": 2, "record_labels": True,
                       "blocks": BLOCKS}))
  out0, out1, out_single = _finish(procs)

  # Per-host input: each process fed half of each global batch, its own rows (host 0's first).
  fed0, fed1, fed_global = _line(out0, "FED"), _line(out1, "FED"), _line(out_single, "FED")
  assert len(fed0) == len(fed1) == len(fed_global) == STEPS
  for a, b, g in zip(fed0, fed1, fed_global):
    assert len(a) == len(b) == len(g) // 2 == 8 and a + b == g
  assert fed0 != fed1  # two shards, not one stream twice

  # The same training: losses, final evaluation (every eval example once, over both hosts' padded shards).
  losses = _train_losses(multi)
  assert len(set(np.round(losses, 4))) > 1  # the loss moves: the comparison is not of constants
  np.testing.assert_allclose(losses, _train_losses(single), rtol=2e-5, atol=1e-6)
  with open(os.path.join(multi, "results.json")) as f:
    r_multi = json.load(f)
  with open(os.path.join(single, "results.json")) as f:
    r_single = json.load(f)
  assert r_multi["num_devices"] == r_single["num_devices"] == 4
  assert r_multi["num_eval_examples"] == r_single["num_eval_examples"] == 360
  np.testing.assert_allclose(r_multi["eval_loss"], r_single["eval_loss"], rtol=2e-5)
  assert _line(out0, "RESULTS") == _line(out1, "RESULTS")  # both processes ended with the same numbers

  # Checkpoints: every process joined each orbax save with its own data-iterator state, which is where that
  # host's stream stands in the reference; the saved train state is the reference's.
  for step in (2, 4):
    with open(os.path.join(single, "checkpoints", str(step), "data", "process_0-of-1.json")) as f:
      hosts = json.load(f)  # the emulated hosts' states, in host order
    for p in range(2):
      with open(os.path.join(multi, "checkpoints", str(step), "data", f"process_{p}-of-2.json")) as f:
        assert json.load(f) == hosts[p]
  _assert_trees_close(_restore_state(os.path.join(multi, "checkpoints", "4", "state")),
                      _restore_state(os.path.join(single, "checkpoints", "4", "state")))
  _assert_trees_close(model_dir_lib.restore(os.path.join(multi, "model")),
                      model_dir_lib.restore(os.path.join(single, "model")))

  # Shared files are process 0's alone; process 1 wrote only its own per-process parts inside the workdir.
  def inside(out):
    root = os.path.realpath(multi) + os.sep
    return [os.path.relpath(w, root) for w in _line(out, "WRITES") if os.path.realpath(w).startswith(root)]

  lead, other = inside(out0), inside(out1)
  for name in SHARED:
    assert any(w == name or w.startswith(name) for w in lead), (name, lead)
  strays = [w for w in other if not re.search(r"process_1\b|\.write-test-\d+$", w)]
  assert not strays, strays
  assert sum("process_1-of-2.json" in w for w in other) == 2  # it joined both checkpoint saves
