"""The plan of a sweep: its runs (configs x tasks x grid points, sharded) and the jobs that run them.

The command line is `python -m vit_adapt.sweep` (vit_adapt/sweep/__main__.py).
"""

from __future__ import annotations

import os
import sys

from vit_adapt.data import datasets
from vit_adapt.errors import UserError
from vit_adapt.sweep import grid as sweep_grid
from vit_adapt.sweep import pack as sweep_pack
from vit_adapt.sweep import runner as sweep_runner
from vit_adapt.sweep import shared_features

def parse_shard(text: str) -> tuple[int, int]:
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise UserError(f"--shard={text!r}: expected 'i/n', e.g. --shard=0/4.") from None
  if not (n >= 1 and 0 <= i < n):
    raise UserError(f"--shard={text!r}: need 0 <= i < n.")
  return i, n


def _config_task(ref: sweep_grid.ConfigRef) -> str | None:
  """The task a config file selects by itself (e.g. `:demo` -> demo/digits), for run names."""
  try:
    return sweep_grid.load_config(ref.path + (":" + ref.arg if ref.arg else ""), {}).dataset.name
  except Exception:  # noqa: BLE001 -- a config that does not load fails in its own run, with its own message
    return None


def make_runs(configs, tasks: str, grid: str, overrides: str, shard=(0, 1)) -> list[sweep_grid.Run]:
  refs = [sweep_grid.ConfigRef.parse(c) for c in configs]
  task_names = sweep_grid.parse_tasks(tasks)
  for name in task_names:
    datasets.get_dataset(name)  # an unknown task fails here, before anything starts, naming the valid ones
  if not task_names:
    for ref in refs:
      if not ref.task_in_arg():
        ref.default_task = _config_task(ref)
  runs = sweep_grid.expand(refs, task_names, sweep_grid.parse_grid(grid),
                           sweep_grid.parse_overrides(overrides))
  i, n = shard
  return runs[i::n]


def make_jobs(runs, workdir: str, share: str, python: str = sys.executable, pack: int = 1) -> list[sweep_runner.Job]:
  """Single-run jobs, except groups of runs that can share frozen features (one job per group) and, with
  `pack` > 1, packs of up to `pack` runs trained in one program (one job per pack)."""
  groups: list[list[sweep_grid.Run]] = []
  caches: dict[str, tuple[str, str, str]] = {}
  if share == "auto":
    groups = shared_features.plan_groups(runs)
    caches = shared_features.plan_feature_caches(runs, workdir)
  grouped = {r.name for g in groups for r in g}
  jobs = []
  for g in groups:
    group_dir = shared_features.group_dir(workdir, g)
    jobs.append(sweep_runner.Job(runs=g, command=shared_features.group_command(python, workdir, g, group_dir),
                                 log_dir=group_dir))
  # A pack trains its runs' own feature caches itself, so runs that share a cache with others are left alone.
  packs = sweep_pack.plan_packs([r for r in runs if r.name not in grouped and r.name not in caches], pack)
  for p in packs:
    pdir = sweep_pack.pack_dir(workdir, p)
    jobs.append(sweep_runner.Job(runs=p, command=sweep_pack.pack_command(python, workdir, p, pdir), log_dir=pdir))
  grouped |= {r.name for p in packs for r in p}
  by_name: dict[str, sweep_runner.Job] = {}
  for r in runs:
    if r.name in grouped:
      continue
    if r.name in caches:  # one shared feature cache per group; the group's first run builds it
      cache_dir, _, field = caches[r.name]
      r.overrides = {**r.overrides, f"method.{field}": cache_dir}
    job = sweep_runner.Job(runs=[r], command=r.command(python, os.path.join(workdir, r.name)),
                           log_dir=os.path.join(workdir, r.name))
    by_name[r.name] = job
    jobs.append(job)
  for name, (_, leader, _) in caches.items():
    if name != leader and name in by_name:
      by_name[name].after = by_name[leader]
  return jobs
