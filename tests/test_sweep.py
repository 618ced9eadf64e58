"""Sweep logic without training: grid syntax, run naming, device pinning, locking and the scheduler.

The scheduler tests use a trivial stand-in child (`python -c ...`) so they can check process-level behaviour
(slots, failures, busy runs) in seconds; tests/test_sweep_e2e.py runs the real trainer.
"""

import json
import os
import sys

import pytest

from vit_adapt.sweep import plan as sweep
from vit_adapt.sweep import devices as sweep_devices
from vit_adapt.sweep import grid as sweep_grid
from vit_adapt.sweep import runner as sweep_runner
from vit_adapt.sweep import state as sweep_state
from vit_adapt.data import datasets
from vit_adapt.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _cwd():
  old = os.getcwd()
  os.chdir(ROOT)
  yield
  os.chdir(old)


def test_grid_syntax():
  axes = sweep_grid.parse_grid("optim.lr=[1e-3, 3e-3]; seed=[0,1,2];method.mode=[soft,hard];model.dtype=float32")
  assert axes == [("optim.lr", [0.001, 0.003]), ("seed", [0, 1, 2]), ("method.mode", ["soft", "hard"]),
                  ("model.dtype", ["float32"])]
  # Brackets and quotes protect commas; tuples survive as values.
  assert sweep_grid.parse_grid("optim.policies=[(('^head/', 'lr=10'),), ()];x='a,b'") == [
      ("optim.policies", [(("^head/", "lr=10"),), ()]), ("x", ["a,b"])]
  for bad in ("optim.lr", "=[1]", "a b=[1]", "seed=[0];seed=[1]", "seed=[]"):
    with pytest.raises(UserError):
      sweep_grid.parse_grid(bad)
  assert sweep_grid.parse_overrides("model.init='';dataset.root=/data/vtab") == {"model.init": "",
                                                                                 "dataset.root": "/data/vtab"}
  with pytest.raises(UserError, match="use --grid"):
    sweep_grid.parse_overrides("seed=[0,1]")


def test_task_lists_follow_the_registry():
  assert sweep_grid.VTAB_TASKS == datasets.VTAB_1K  # the canonical order of the papers' tables
  assert [len(v) for v in sweep_grid.VTAB_GROUPS.values()] == [7, 4, 8]
  assert sweep_grid.parse_tasks("all") == list(datasets.VTAB_1K)
  assert sweep_grid.parse_tasks("specialized,vtab/dtd,vtab/eurosat") == [
      "vtab/patch_camelyon", "vtab/eurosat", "vtab/resisc45", "vtab/diabetic_retinopathy", "vtab/dtd"]


def test_expansion_names_and_commands():
  runs = sweep.make_runs(["configs/linear_vtab.py:demo,task=vtab/svhn", "configs/adapter_vtab.py"],
                         "vtab/dtd,vtab/kitti", "optim.lr=[0.001,0.01];seed=[0,1]", "model.init='';train.steps=5")
  assert len(runs) == 2 * 2 * 4
  r = runs[0]
  assert r.name == "vtab/dtd/linear_vtab-demo/optim.lr=0.001,seed=0"
  assert r.config == "configs/linear_vtab.py:task=vtab/dtd,demo"  # the sweep's task replaces the arg's
  cmd = r.command("python", "/w/x")
  assert cmd[:5] == ["python", "-m", "vit_adapt.main", "--config=configs/linear_vtab.py:task=vtab/dtd,demo",
                     "--workdir=/w/x"]
  assert set(cmd[5:]) == {"--config.model.init=", "--config.train.steps=5", "--config.optim.lr=0.001",
                          "--config.seed=0"}
  assert runs[-1].name == "vtab/kitti/adapter_vtab/optim.lr=0.01,seed=1"
  assert len({r.name for r in runs}) == len(runs)
  # Shards partition the runs.
  shards = [sweep.make_runs(["configs/adapter_vtab.py"], "natural", "seed=[0,1]", "", (i, 3)) for i in range(3)]
  assert sorted(r.name for s in shards for r in s) == sorted(
      r.name for r in sweep.make_runs(["configs/adapter_vtab.py"], "natural", "seed=[0,1]", ""))
  # Without --tasks each config keeps its own task; an empty grid gives one run named 'default'.
  (r,) = sweep.make_runs(["configs/adapter_vtab.py:task=vtab/dtd"], "", "", "")
  assert r.name == "vtab/dtd/adapter_vtab/default" and r.config == "configs/adapter_vtab.py:task=vtab/dtd"
  # A config that picks its own task (':demo' -> demo/digits) is named after it and run as written.
  (r,) = sweep.make_runs(["configs/linear_vtab.py:demo"], "", "", "")
  assert r.name == "demo/digits/linear_vtab-demo/default" and r.config == "configs/linear_vtab.py:demo"
  with pytest.raises(UserError, match="not found"):
    sweep.make_runs(["configs/nope.py"], "", "", "")
  with pytest.raises(UserError, match="both in --grid and in --overrides"):
    sweep.make_runs(["configs/adapter_vtab.py"], "", "seed=[0]", "seed=1")


def test_device_pinning_env():
  gpu = sweep_devices.Devices("gpu", 4)
  env = sweep_devices.child_env(gpu, sweep_devices.Slot(2, 0), 1, base={"CUDA_VISIBLE_DEVICES": ""})
  assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["VIT_ADAPT_SWEEP_DEVICE"] == "gpu:2"
  assert env["VIT_ADAPT_SINGLE_PROCESS"] == "1"  # a child never joins the job the sweep runs in
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env
  env = sweep_devices.child_env(gpu, sweep_devices.Slot(1, 1), 2)
  assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" and float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) < 0.5
  tpu = sweep_devices.child_env(sweep_devices.Devices("tpu", 4), sweep_devices.Slot(3, 0), 1, base={})
  assert tpu["TPU_VISIBLE_CHIPS"] == "3" and tpu["TPU_PROCESS_BOUNDS"] == "1,1,1"
  assert tpu["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,1,1" and tpu["TPU_PROCESS_PORT"] == "8479"
  cpu = sweep_devices.child_env(sweep_devices.Devices("cpu", 4), sweep_devices.Slot(1, 0), 1,
                                base={"XLA_FLAGS": "--xla_cpu_foo --xla_force_host_platform_device_count=4"})
  assert cpu["XLA_FLAGS"] == "--xla_cpu_foo --xla_force_host_platform_device_count=1"
  # Slots spread over devices before doubling up on one.
  assert [s.key for s in sweep_devices.make_slots(2, 2)] == ["0.0", "1.0", "0.1", "1.1"]


def test_probe_sees_forced_host_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  found = sweep_devices.probe(env=env)
  assert (found.platform, found.count) == ("cpu", 4)


def _job(tmp_path, name, code):
  run = sweep_grid.Run(name=name, task="t", config="c.py", config_label="c", point={"seed": 0}, overrides={})
  d = os.path.join(tmp_path, name)
  return sweep_runner.Job(runs=[run], command=[sys.executable, "-c", code, d], log_dir=d)


_WRITE = ("import json, os, sys, time; time.sleep(0.3); "
          "json.dump({'device': os.environ['VIT_ADAPT_SWEEP_DEVICE'], 'xla': os.environ.get('XLA_FLAGS', ''), "
          "'cores': sorted(os.sched_getaffinity(0))}, open(os.path.join(sys.argv[1], 'results.json'), 'w'))")


def _runner(tmp_path, jobs, devices=4, per_device=1, retries=0):
  state = sweep_state.StateFile(sweep_state.state_path(str(tmp_path)), header={})
  lines = []
  r = sweep_runner.Runner(jobs, str(tmp_path), sweep_devices.Devices("cpu", devices), per_device, state,
                          retries=retries, progress_every_s=0.5, printer=lines.append)
  return r, lines


def test_scheduler_uses_every_slot_isolates_failures_and_skips_done(tmp_path):
  jobs = [_job(tmp_path, f"ok{i}", _WRITE) for i in range(6)]
  jobs.insert(2, _job(tmp_path, "bad", "import sys; print('boom'); sys.exit(3)"))
  runner, lines = _runner(tmp_path, jobs)
  assert runner.run() == 1
  state = sweep_state.load(sweep_state.state_path(str(tmp_path)))
  assert state["runs"]["bad"]["status"] == "failed" and state["runs"]["bad"]["returncode"] == 3
  assert "boom" in open(state["runs"]["bad"]["log"]).read()
  assert any("FAILED bad (exit code 3)" in ln for ln in lines)
  results = [json.load(open(os.path.join(tmp_path, f"ok{i}", "results.json"))) for i in range(6)]
  assert {r["device"] for r in results} == {"cpu:0", "cpu:1", "cpu:2", "cpu:3"}
  assert all(r["xla"].endswith("--xla_force_host_platform_device_count=1") for r in results)
  assert all(len(r["cores"]) >= 1 for r in results)
  assert any("ETA" in ln and "failed 1" in ln for ln in lines)
  # A second invocation skips the finished runs and retries the failed one.
  runner, lines = _runner(tmp_path, jobs)
  assert runner.run() == 1
  state = sweep_state.load(sweep_state.state_path(str(tmp_path)))
  assert state["runs"]["bad"]["attempts"] == 2 and state["runs"]["ok0"]["attempts"] == 1


def test_retries_and_busy_runs(tmp_path):
  flaky = ("import os, sys; d = sys.argv[1]; m = os.path.join(d, 'tried'); "
           "first = not os.path.exists(m); open(m, 'w').close(); "
           "sys.exit(1) if first else open(os.path.join(d, 'results.json'), 'w').write('{}')")
  runner, lines = _runner(tmp_path, [_job(tmp_path, "flaky", flaky)], devices=1, retries=1)
  assert runner.run() == 0
  assert runner.state.runs["flaky"]["attempts"] == 2
  # A run locked by another process (a second sweep on the same directory) is left alone, not failed.
  job = _job(tmp_path, "locked", _WRITE)
  fd = sweep_runner._try_lock(job.log_dir)
  try:
    runner, lines = _runner(tmp_path, [job], devices=1)
    assert runner.run() == 0
    assert runner.state.runs["locked"]["status"] == "busy"
    assert not os.path.exists(os.path.join(job.log_dir, "results.json"))
  finally:
    os.close(fd)


def test_cli_errors_exit_2(tmp_path):
  import subprocess
  out = subprocess.run([sys.executable, "-m", "vit_adapt.sweep", "--config=configs/adapter_vtab.py",
                        f"--workdir={tmp_path}", "--grid=seed"], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 2 and "error: --grid item 'seed'" in out.stderr and "Traceback" not in out.stderr
  out = subprocess.run([sys.executable, "-m", "vit_adapt.sweep", "--config=configs/adapter_vtab.py",
                        f"--workdir={tmp_path}", "--tasks=vtab/dtd", "--grid=seed=[0,1]", "--dry_run"],
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0 and "2 runs in 2 jobs" in out.stdout
  out = subprocess.run([sys.executable, "-m", "vit_adapt.sweep", "--config=configs/adapter_vtab.py",
                        f"--workdir={tmp_path}", "--tasks=vtab/dtdd"], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 2 and "unknown task 'vtab/dtdd'" in out.stderr


def test_prerequisite_jobs_start_first(tmp_path):
  """A job with `after` waits for its prerequisite even when a slot is free (shared feature caches)."""
  first = _job(tmp_path, "first", "import os, sys, time; time.sleep(1.0); open(os.path.join(sys.argv[1], "
               "'built'), 'w').close(); open(os.path.join(sys.argv[1], 'results.json'), 'w').write('{}')")
  second = _job(tmp_path, "second", "import os, sys; assert os.path.exists(os.path.join(sys.argv[1], '..', "
                "'first', 'built')); open(os.path.join(sys.argv[1], 'results.json'), 'w').write('{}')")
  second.after = first
  runner, _ = _runner(tmp_path, [second, first], devices=2)
  assert runner.run() == 0
  assert runner.state.runs["second"]["status"] == "done"


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "configs", "synqt_vtab.py")), reason="SynQT not here")
def test_synqt_runs_share_one_feature_cache(tmp_path):
  runs = sweep.make_runs(["configs/synqt_vtab.py", "configs/adapter_vtab.py"], "vtab/dtd,vtab/svhn",
                         "seed=[0,1]", "model.init=/w/ViT-B_16.npz;method.cache_features=kv")
  jobs = sweep.make_jobs(runs, str(tmp_path), "auto")
  synqt = [j for j in jobs if "/synqt_vtab/" in j.runs[0].name]
  assert len(synqt) == 4
  dirs = {j.runs[0].name: j.runs[0].overrides["method.cache_dir"] for j in synqt}
  # One cache per task (the backbone is a file: the seeds share it); the second seed waits for the first.
  assert dirs["vtab/dtd/synqt_vtab/seed=0"] == dirs["vtab/dtd/synqt_vtab/seed=1"] != dirs[
      "vtab/svhn/synqt_vtab/seed=0"]
  assert all(d.startswith(os.path.join(str(tmp_path), "_shared", "synqt_cache")) for d in dirs.values())
  by_name = {j.runs[0].name: j for j in synqt}
  assert by_name["vtab/dtd/synqt_vtab/seed=1"].after is by_name["vtab/dtd/synqt_vtab/seed=0"]
  assert by_name["vtab/dtd/synqt_vtab/seed=0"].after is None
  assert any(a.startswith("--config.method.cache_dir=") for a in by_name["vtab/dtd/synqt_vtab/seed=1"].command)
  # Off: nothing is rewritten.
  runs = sweep.make_runs(["configs/synqt_vtab.py"], "vtab/dtd", "seed=[0,1]", "method.cache_features=kv")
  assert all("method.cache_dir" not in j.runs[0].overrides for j in sweep.make_jobs(runs, str(tmp_path), "off"))
