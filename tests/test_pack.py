"""Packed sweeps (vit_adapt/train/packed.py, vit_adapt/sweep/pack.py): K runs in one program give each run the
results it has alone; a diverging run stops alone; a killed pack resumes exactly; the run axis shards over a
device mesh."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import make_tiny_config
from vit_adapt import train
from vit_adapt.errors import UserError
from vit_adapt.sweep import grid, plan
from vit_adapt.train import packed

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pack_worker.py")


def tiny(name: str = "adapter", method_fields=None, **blocks):
  c = make_tiny_config(name, **blocks)
  c.method.update(method_fields or {})
  return c


def train_losses(workdir) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row["train/loss"] for row in map(json.loads, f) if "train/loss" in row}


def logged_steps(workdir) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [row["step"] for row in map(json.loads, f) if "train/loss" in row]


def read_results(workdir) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------- planning
def test_pack_key_ignores_exactly_the_free_fields():
  base = tiny()
  free = tiny(optim=dict(lr=3e-3, min_lr=0.0, wd=1e-3), method_fields=dict(scale=0.5))
  free.seed = 7
  assert packed.pack_key(base) == packed.pack_key(free)
  for blocks in (dict(method_fields=dict(bottleneck=16)), dict(train=dict(batch_size=16)), dict(optim=dict(wd=0.0)),
                 dict(dataset=dict(label_smoothing=0.1)), dict(optim=dict(b1=0.8))):
    assert packed.pack_key(tiny(**blocks)) != packed.pack_key(base), blocks
  with pytest.raises(UserError, match="differ in .*method.bottleneck"):
    packed.check_pack([base, tiny(method_fields=dict(bottleneck=16))])


@pytest.mark.parametrize("threads, runs, expected", [(8, 8, 0), (8, 4, 2), (8, 5, 0), (16, 2, 8), (0, 1, 0)])
def test_packed_runs_share_the_read_threads_and_read_the_same_batches(threads, runs, expected):
  from vit_adapt import tasks
  c = tiny()
  c.dataset.num_threads = threads
  reading = packed._reading_config(c, runs)
  assert reading.dataset.num_threads == expected and c.dataset.num_threads == threads  # the run's own untouched
  assert reading.to_dict() == {**c.to_dict(), "dataset": {**c.dataset.to_dict(), "num_threads": expected}}
  task = tasks.for_config(c)
  alone, in_pack = task.train_iterator(c, seed=3), task.train_iterator(reading, seed=3)
  for _ in range(4):
    a, b = next(alone), next(in_pack)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_sweep_groups_packable_runs_into_packs_of_at_most_k(tmp_path):
  runs = plan.make_runs(["configs/adapter_vtab.py:demo"], "",
                        "method.bottleneck=[8,16];seed=[0,1,2];optim.lr=[1e-3,3e-3]", "")
  assert len(runs) == 12
  jobs = plan.make_jobs(runs, str(tmp_path), "auto", pack=4)
  assert [len(j.runs) for j in jobs] == [4, 2, 4, 2]
  assert all(j.command[1:3] == ["-m", "vit_adapt.pack"] for j in jobs)
  for job in jobs:  # a pack never mixes shapes (bottlenecks)
    assert len({r.point["method.bottleneck"] for r in job.runs}) == 1
    with open(job.command[-1].split("=", 1)[1]) as f:
      spec = json.load(f)
    assert [s["workdir"] for s in spec["runs"]] == [str(tmp_path / r.name) for r in job.runs]
  assert [len(j.runs) for j in plan.make_jobs(runs, str(tmp_path), "auto", pack=1)] == [1] * 12


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.slow
@pytest.mark.parametrize("method,field,values", [
    ("adapter", "scale", (1.0, 0.5)), ("lora", "alpha", (8.0, 4.0)), ("dyt", "target_rate", (0.5, 0.7)),
    ("synqt", "feat_scale", (0.1, 0.3))])
def test_packed_runs_equal_the_same_runs_alone(tmp_path, fast_compile, monkeypatch, method, field, values):
  configs = []
  for seed, lr, smoothing, value in zip((0, 1), (1e-3, 3e-3), (0.1, 0.2), values):
    c = tiny(method, train=dict(steps=3), dataset=dict(label_smoothing=smoothing))
    c.seed, c.optim.lr = seed, lr
    c.method[field] = value
    configs.append(c)
  alone = [train.train_and_evaluate(c, str(tmp_path / f"alone{i}")) for i, c in enumerate(configs)]
  workdirs = [str(tmp_path / f"run{i}") for i in range(2)]

  def no_solo_step(*args, **kwargs):
    raise AssertionError("a pack reads its memory from the packed step; it compiles no solo step")

  monkeypatch.setattr(packed.train_state, "train_step_memory", no_solo_step)
  together = packed.train_pack(configs, workdirs, str(tmp_path / "pack"))
  for i, w in enumerate(workdirs):
    a, p = alone[i], together[i]
    assert p == read_results(w)
    # On CPU the pack steps its runs one after another, each the program of the run alone: bitwise equal.
    assert p["pack"]["runs_one_after_another"]
    assert (p["top1"], p["eval_loss"], p["final_train_loss"]) == (a["top1"], a["eval_loss"], a["final_train_loss"])
    la, lp = train_losses(tmp_path / f"alone{i}"), train_losses(w)
    assert list(lp) == list(la) == [1, 2, 3]
    assert lp == la
    assert p["trainable_params"] == a["trainable_params"] and p["seed"] == a["seed"]
    assert {"config.json", "metrics.jsonl", "model", "results.json", "run.json"} <= set(os.listdir(w))
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(w))
    assert p["pack"]["runs"] == 2 and p["pack"]["index"] == i
    # Each run's share of the packed step's memory, said as such; the same order as the run's own step.
    assert p["peak_train_memory_source"] == "packed step / 2 runs per device"
    assert "peak_train_memory_source" not in a
    assert 0.3 * a["peak_train_memory_bytes"] < p["peak_train_memory_bytes"] < 3 * a["peak_train_memory_bytes"]
  # The runs really differ (seed, lr, the method's value): the comparison is not of one run with itself.
  assert train_losses(workdirs[0]) != train_losses(workdirs[1])
  # The values that differ (SynQT's scales only set initial parameters: they enter on the host).
  assert together[0]["pack"]["varying"] == ["optim.lr"] + ([] if method == "synqt" else [f"method.{field}"])
  assert "optim.lr" in together[0]["pack"]["traced"]
  if method == "adapter":  # re-run after the last step: nothing trains, the same results (the memory included)
    again = packed.train_pack(configs, workdirs, str(tmp_path / "pack"))
    for p, q in zip(together, again):
      assert {k: v for k, v in q.items() if "wall_time" not in k and k != "pack"} == \
             {k: v for k, v in p.items() if "wall_time" not in k and k != "pack"}


@pytest.mark.slow
def test_a_diverging_run_stops_alone_and_the_others_go_on(tmp_path, fast_compile):
  good = tiny(train=dict(steps=4))
  bad = tiny(train=dict(steps=4), optim=dict(lr=1e30))
  alone = train.train_and_evaluate(good, str(tmp_path / "alone"))
  dirs = [str(tmp_path / "good"), str(tmp_path / "bad")]
  results = packed.train_pack([good, bad], dirs, str(tmp_path / "pack"))
  assert results[1] is None and not os.path.exists(os.path.join(dirs[1], "results.json"))
  with open(os.path.join(dirs[1], packed.ERROR_FILE)) as f:
    error = json.load(f)
  assert "diverged" in error["error"] and 1 <= error["step"] <= 4
  assert max(logged_steps(dirs[1]), default=0) < error["step"]  # nothing logged from the failed step on
  assert results[0]["top1"] == alone["top1"]
  assert train_losses(dirs[0]) == train_losses(tmp_path / "alone")


# ---------------------------------------------------------------------------------------------- resume + mesh
RUNS = [{"seed": 0, "optim": {"lr": 1e-3}}, {"seed": 1, "optim": {"lr": 3e-3}, "method": {"scale": 0.5}},
        {"seed": 2, "optim": {"lr": 2e-3}}, {"seed": 0, "optim": {"lr": 5e-3, "wd": 1e-3}}]
BLOCKS = {"train": {"steps": 8, "checkpoint_every_steps": 3, "keep_checkpoints": 0}}


def run_worker(spec: dict) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, WORKER, json.dumps(spec)], capture_output=True, text=True, timeout=900)


def pack_state(root) -> dict:
  state = ocp.StandardCheckpointer().restore(os.path.join(root, "pack", "checkpoints", "8", "state"))
  leaves = jax.tree_util.tree_leaves_with_path(state)
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


@pytest.fixture(scope="module")
def clean_pack(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("clean"))
  done = run_worker({"root": root, "runs": RUNS, "blocks": BLOCKS})
  assert done.returncode == 0, done.stderr[-3000:]
  return root


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_resumes_the_pack_exactly(clean_pack, tmp_path):
  killed = str(tmp_path)
  died = run_worker({"root": killed, "runs": RUNS, "blocks": BLOCKS, "kill_before_step": 6})
  assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
  assert ocp.CheckpointManager(os.path.join(killed, "pack", "checkpoints")).all_steps() == [3]
  resumed = run_worker({"root": killed, "runs": RUNS, "blocks": BLOCKS})
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  a, b = pack_state(clean_pack), pack_state(killed)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  for i in range(len(RUNS)):
    clean, run = os.path.join(clean_pack, f"run{i}"), os.path.join(killed, f"run{i}")
    # Steps 1-5 ran before the kill; the restart resumed from the step-3 checkpoint and re-ran 4 and 5.
    assert logged_steps(run) == [1, 2, 3, 4, 5, 4, 5, 6, 7, 8]
    assert train_losses(run) == train_losses(clean)
    keys = ("top1", "eval_loss", "final_train_loss")
    assert {k: read_results(run)[k] for k in keys} == {k: read_results(clean)[k] for k in keys}


@pytest.mark.slow
def test_the_run_axis_shards_over_a_device_mesh(clean_pack, tmp_path):
  # 4 runs on 8 devices: a ('runs', 'data') mesh of 4 x 2 -- each run on its own pair of devices.
  done = run_worker({"root": str(tmp_path), "devices": 8, "runs": RUNS, "blocks": BLOCKS})
  assert done.returncode == 0, done.stderr[-3000:]
  for i in range(len(RUNS)):
    one, eight = read_results(os.path.join(clean_pack, f"run{i}")), read_results(str(tmp_path / f"run{i}"))
    assert eight["pack"]["devices"] == 8 and eight["num_devices"] == 2 and one["num_devices"] == 1
    l1, l8 = train_losses(os.path.join(clean_pack, f"run{i}")), train_losses(str(tmp_path / f"run{i}"))
    assert list(l1) == list(l8)
    np.testing.assert_allclose(list(l8.values()), list(l1.values()), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(eight["eval_loss"], one["eval_loss"], rtol=2e-5)
    assert eight["num_eval_examples"] == one["num_eval_examples"]


def test_grid_items_may_be_separated_by_commas():
  # The form of the packed-sweep example (docs/sweeps.md): a top-level ',' before `key=` separates items.
  assert grid.parse_grid("seed=[0,1,2,3],optim.lr=[1e-3,3e-3]") == [("seed", [0, 1, 2, 3]),
                                                                   ("optim.lr", [1e-3, 3e-3])]
  assert grid.parse_grid("method.mode=[a,b],seed=2") == [("method.mode", ["a", "b"]), ("seed", [2])]
  assert grid.parse_overrides("dataset.root=/data/a,b;train.steps=3") == {"dataset.root": "/data/a,b",
                                                                          "train.steps": 3}
