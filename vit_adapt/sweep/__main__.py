r"""Sweeps: every (config) x (task) x (grid point) as its own run, in parallel over the accelerators.

  python -m vit_adapt.sweep --config=configs/dyt_vtab.py --tasks=all \
      --grid='optim.lr=[1e-3,3e-3];seed=[0,1,2]' --workdir=runs/dyt_vtab

Runs land in `<workdir>/<task>/<config label>/<k=v,...>/` with `log.txt` (the child's stdout and stderr) and the
trainer's `results.json`; `<workdir>/sweep_state.json` records every run's status, device, attempts and log.
Re-running the same command continues the sweep: finished runs are skipped, interrupted ones resume from their
latest checkpoint, failed ones are retried. One failing run never stops the others; failures are listed at the
end with their log paths and the command exits 1. Then `python -m vit_adapt.report <workdir>` makes the tables.

  --config        config file[:arg], repeatable (one sweep over several methods); `task=` in the arg is
                  replaced by each of --tasks
  --tasks         'all' (the 19 VTAB-1k tasks), 'natural' | 'specialized' | 'structured', or task names
                  (comma-separated, e.g. vtab/dtd,vtab/svhn); empty = the config's own task
  --grid          'key=[v1,v2];key2=[...]' over config fields (product); see vit_adapt/sweep/grid.py
  --overrides     'key=v;key2=v2' applied to every run, not part of run names (data paths, steps, ...)
  --runs_per_device  several small runs per accelerator (memory is split between them on GPU)
  --devices       use only the first N devices (0 = all the probe finds)
  --shard         'i/n': run only every n-th run starting at i (one sweep per host of a pod slice, sharing
                  a file system; each shard writes its own state file)
  --share_features  'auto': runs whose training never changes the backbone's image features (linear probe)
                  and that differ only in optimiser settings or seed train together on features computed once
                  (vit_adapt/sweep/shared_features.py); SynQT runs with `method.cache_features` whose frozen
                  features agree share one feature cache (the first builds it, the others start after it);
                  'off': every run on its own
  --compilation_cache  JAX's persistent compilation cache shared by the jobs: a directory, or 'off'
                  (default ~/.cache/vit_adapt/jax; vit_adapt/cli/compile_cache.py)
  --pack          K > 1: runs that agree on everything that fixes array shapes (they may differ in seed,
                  learning rate, weight decay, label smoothing and a method's numeric fields) train K at a time
                  in one compiled program (vit_adapt/sweep/pack.py, vit_adapt/train/packed.py); 1 = off
"""

from __future__ import annotations

import os
import sys

from absl import flags

from vit_adapt import cli
from vit_adapt.cli import compile_cache
from vit_adapt.errors import UserError
from vit_adapt.sweep import devices as sweep_devices
from vit_adapt.sweep import runner as sweep_runner
from vit_adapt.sweep import state as sweep_state
from vit_adapt.sweep.plan import make_jobs, make_runs, parse_shard

_CONFIG = flags.DEFINE_multi_string("config", None, "Config file[:arg]; repeat for several methods.")
_TASKS = flags.DEFINE_string("tasks", "", "'all', a group name, or comma-separated task names.")
_GRID = flags.DEFINE_string("grid", "", "Grid: 'key=[v1,v2];key2=[...]'.")
_OVERRIDES = flags.DEFINE_string("overrides", "", "Fixed overrides for every run: 'key=v;key2=v2'.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.")
_RUNS_PER_DEVICE = flags.DEFINE_integer("runs_per_device", 1, "Concurrent runs per accelerator.")
_DEVICES = flags.DEFINE_integer("devices", 0, "Use only the first N devices (0 = all).")
_SHARD = flags.DEFINE_string("shard", "0/1", "'i/n': this process runs runs i, i+n, i+2n, ...")
_RETRIES = flags.DEFINE_integer("retries", 0, "Retries of a failed run within this invocation.")
_SHARE = flags.DEFINE_enum("share_features", "auto", ["auto", "off"], "Frozen-feature sharing (see doc).")
_PACK = flags.DEFINE_integer("pack", 1, "Train up to K packable runs in one program (1 = every run alone).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the runs and their commands, run nothing.")
_PROGRESS = flags.DEFINE_float("progress_every_s", 60.0, "Seconds between progress lines while nothing changes.")
compile_cache.define_flag()


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; flags take the form --name=value.")
  if not _CONFIG.value:
    raise UserError("--config is required, e.g. --config=configs/dyt_vtab.py.")
  if not _WORKDIR.value:
    raise UserError("--workdir is required: the directory that holds every run of the sweep.")
  if _RUNS_PER_DEVICE.value < 1:
    raise UserError("--runs_per_device must be >= 1.")
  if _PACK.value < 1:
    raise UserError(f"--pack={_PACK.value}: use 1 (every run alone) or K > 1 (up to K runs in one program).")
  shard = parse_shard(_SHARD.value)
  workdir = os.path.abspath(_WORKDIR.value)
  runs = make_runs(_CONFIG.value, _TASKS.value, _GRID.value, _OVERRIDES.value, shard)
  if not runs:
    raise UserError("the sweep has no runs (empty --tasks or --grid, or a shard with nothing in it).")
  jobs = make_jobs(runs, workdir, _SHARE.value, pack=_PACK.value)
  if _DRY_RUN.value:
    for job in jobs:
      print(f"{job.name}\n  {' '.join(job.command)}")
    print(f"{len(runs)} runs in {len(jobs)} jobs.")
    return 0
  # The jobs inherit the cache setting through the environment: a task's second seed skips its compiles.
  compile_cache.enable(flags.FLAGS.compilation_cache)
  devices = sweep_devices.probe()
  if _DEVICES.value:
    devices = sweep_devices.Devices(devices.platform, min(devices.count, _DEVICES.value), devices.kind)
  print(f"[sweep] {len(runs)} runs ({len(jobs)} jobs) on {devices.count} {devices.platform} device(s) "
        f"x {_RUNS_PER_DEVICE.value} per device; workdir {workdir}", flush=True)
  state = sweep_state.StateFile(sweep_state.state_path(workdir, shard), header=dict(
      argv=sys.argv, workdir=workdir, platform=devices.platform, devices=devices.count,
      device_kind=devices.kind, runs_per_device=_RUNS_PER_DEVICE.value, shard=list(shard)))
  runner = sweep_runner.Runner(jobs, workdir, devices, _RUNS_PER_DEVICE.value, state, retries=_RETRIES.value,
                               progress_every_s=_PROGRESS.value)
  failed = runner.run()
  return 1 if failed else 0


if __name__ == "__main__":
  cli.run(main)
