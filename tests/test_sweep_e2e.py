"""End-to-end sweeps through the real `python -m vit_adapt.sweep` -> `vit_adapt.main` / shared-feature jobs.

Tiny settings: a width-32 one-block ViT at 32 px (`mu/8`), 2 training steps, generated NOAH-layout image
folders for three VTAB task names, XLA optimisations off (children inherit JAX_DISABLE_MOST_OPTIMIZATIONS).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from vit_adapt.sweep import report
from vit_adapt.sweep import state as sweep_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("vtab/dtd", "vtab/eurosat", "vtab/kitti")
FOLDERS = {"vtab/dtd": ("dtd", 47), "vtab/eurosat": ("eurosat", 10), "vtab/kitti": ("kitti", 4)}


def make_folder_dataset(root, n_train=24, n_test=16, size=20):
  """NOAH/VPT layout: <root>/<task>/images/*.png with train800val200.txt and test.txt."""
  rng = np.random.default_rng(0)
  for task, (folder, classes) in FOLDERS.items():
    d = os.path.join(root, folder)
    os.makedirs(os.path.join(d, "images"))
    lines = []
    for i in range(n_train + n_test):
      rel = f"images/{i}.png"
      Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(d, rel))
      lines.append(f"{rel} {i % classes}")
    with open(os.path.join(d, "train800val200.txt"), "w") as f:
      f.write("\n".join(lines[:n_train]) + "\n")
    with open(os.path.join(d, "test.txt"), "w") as f:
      f.write("\n".join(lines[n_train:]) + "\n")
  return root


def tiny_overrides(data_root, backbone=""):
  items = {"model.variant": "mu/8", "model.image_size": 32, "model.depth": 1, "model.init": backbone or "''",
           "dataset.source": "folder", "dataset.root": data_root, "dataset.num_threads": 2,
           "train.steps": 2, "train.batch_size": 8, "train.warmup_epochs": 0, "train.log_every_steps": 1,
           "train.checkpoint_every_steps": 1, "eval.batch_size": 16, "efficiency.enabled": False,
           "efficiency.batch_size": 8}
  return ";".join(f"{k}={v}" for k, v in items.items())


def sweep_cmd(workdir, configs, tasks, grid, overrides, *extra):
  cmd = [sys.executable, "-m", "vit_adapt.sweep", f"--workdir={workdir}", f"--tasks={','.join(tasks)}",
         f"--grid={grid}", f"--overrides={overrides}", "--progress_every_s=2", *extra]
  return cmd + [f"--config={c}" for c in configs]


def sweep_env(devices=1):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  return env


def _state(workdir):
  return sweep_state.load(os.path.join(workdir, "sweep_state.json"))


def _alive(pid):
  try:
    with open(f"/proc/{pid}/status") as f:
      return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
  except FileNotFoundError:
    return False


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
  """A saved tiny backbone: linear-probe runs then share one set of frozen features across seeds."""
  sys.path.insert(0, ROOT)
  from vit_adapt import methods
  from vit_adapt.sweep.grid import load_config
  os.chdir(ROOT)
  config = load_config("configs/linear_vtab.py:demo", {"model.variant": "mu/8", "model.depth": 1})
  model, method = methods.build_model(config)
  d = str(tmp_path_factory.mktemp("backbone") / "model")
  methods.save_model_dir(d, config, dict(methods.init_variables(model, method, config)))
  return d


@pytest.mark.slow
def test_sweep_killed_and_resumed_on_four_cpu_devices(tmp_path, backbone):
  """2 methods x 3 tasks x 2 seeds on a 4-device CPU mesh: SIGKILL half-way, resume, every cell present."""
  data = make_folder_dataset(str(tmp_path / "data"))
  workdir = str(tmp_path / "sweep")
  cmd = sweep_cmd(workdir, ["configs/linear_vtab.py", "configs/adapter_vtab.py"], TASKS, "seed=[0,1]",
                  tiny_overrides(data, backbone))
  env = sweep_env(devices=4)

  # ---- first invocation: kill the sweep process once some runs finished and others are running
  log1 = open(tmp_path / "sweep1.log", "w")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT)
  deadline = time.time() + 900
  killed_pids = []
  while time.time() < deadline:
    st = _state(workdir).get("runs", {})
    done = [n for n, r in st.items() if r["status"] == "done"]
    running = [r for r in st.values() if r["status"] == "running"]
    if len(done) >= 2 and running:
      killed_pids = [r["pid"] for r in running]
      proc.send_signal(signal.SIGKILL)
      break
    assert proc.poll() is None, open(tmp_path / "sweep1.log").read()[-3000:]
    time.sleep(0.5)
  proc.wait()
  log1.close()
  assert killed_pids, "the sweep never had finished and running runs at the same time"
  done_before = {n for n, r in _state(workdir)["runs"].items()
                 if os.path.isfile(os.path.join(workdir, n, "results.json"))}
  assert 2 <= len(done_before) < 12
  # The children die with the sweep (no orphan keeps writing into a run directory).
  time.sleep(3)
  assert not [p for p in killed_pids if _alive(p)]

  # ---- second invocation: the same command finishes the sweep
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
  state = _state(workdir)
  assert state["devices"] == 4 and state["platform"] == "cpu"
  runs = state["runs"]
  assert len(runs) == 12 and all(r["status"] == "done" for r in runs.values())
  assert "done 12/12" in out.stdout and "ETA" in out.stdout
  # Runs finished before the kill were not started again; every run's log names its device and command.
  for name, rec in runs.items():
    with open(rec["log"]) as f:
      headers = [line for line in f if line.startswith("===== sweep")]
    if name in done_before:
      assert rec["attempts"] == len(headers) == 1 or rec["shared_group"], name
  # Linear probes trained as shared-feature groups (one per task, both seeds), adapters on their own.
  shared = {n for n, r in runs.items() if r["shared_group"]}
  assert shared == {n for n in runs if "/linear_vtab/" in n}
  for n in shared:
    with open(os.path.join(workdir, n, "results.json")) as f:
      assert json.load(f)["shared_features"]["runs"] == 2
  # All four devices were used, each child saw exactly one device.
  devices = {h["device"] for r in runs.values() for h in r["history"]}
  assert devices == {"cpu:0", "cpu:1", "cpu:2", "cpu:3"}
  for n in runs:
    with open(os.path.join(workdir, n, "results.json")) as f:
      assert json.load(f)["num_devices"] == 1

  # ---- the report has every cell: 2 rows x 3 tasks, each a mean +- std over 2 seeds
  rep = report.make_report(workdir)
  table = {t["label"]: t for t in rep["table"]}
  assert set(table) == {"linear_vtab", "adapter_vtab"}
  for t in table.values():
    for task in TASKS:
      mean, std, n = t["tasks"][task]
      assert n == 2 and 0 <= mean <= 100
    assert t["params_m"] > 0 and t["gmacs"] > 0
  lines = [ln for ln in rep["markdown"].splitlines() if ln.startswith("| linear_vtab") or ln.startswith(
      "| adapter_vtab")]
  assert len(lines) == 2 and all(ln.count("±") >= 3 for ln in lines)
  assert all(os.path.isfile(f) for f in rep["files"])
  assert any(f.endswith("accuracy_vs_gmacs.png") for f in rep["files"])


def test_failing_run_is_reported_and_does_not_stop_the_rest(tmp_path):
  """One grid point has an invalid override: it fails, the other run completes, the sweep exits 1."""
  data = make_folder_dataset(str(tmp_path / "data"))
  workdir = str(tmp_path / "sweep")
  cmd = sweep_cmd(workdir, ["configs/adapter_vtab.py"], ["vtab/dtd"], "train.steps=[2,not_a_number]",
                  tiny_overrides(data).replace("train.steps=2;", ""), "--runs_per_device=2")
  out = subprocess.run(cmd, cwd=ROOT, env=sweep_env(), capture_output=True, text=True, timeout=900)
  assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
  runs = _state(workdir)["runs"]
  good, bad = "vtab/dtd/adapter_vtab/train.steps=2", "vtab/dtd/adapter_vtab/train.steps=not_a_number"
  assert runs[good]["status"] == "done" and runs[bad]["status"] == "failed"
  assert runs[bad]["returncode"] != 0
  bad_log = os.path.join(workdir, bad, "log.txt")
  assert runs[bad]["log"] == bad_log
  assert "FAILED " + bad in out.stdout and f"log {bad_log}" in out.stdout
  assert "not_a_number" in open(bad_log).read()
  assert os.path.isfile(os.path.join(workdir, good, "results.json"))
  # Re-running retries only the failed run (which fails again) and leaves the finished one alone.
  out2 = subprocess.run(cmd, cwd=ROOT, env=sweep_env(), capture_output=True, text=True, timeout=900)
  assert out2.returncode == 1
  runs2 = _state(workdir)["runs"]
  assert runs2[good]["attempts"] == 1 and runs2[bad]["attempts"] == 2
