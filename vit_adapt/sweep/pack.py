"""Packed sweeps: the sweep's runs that can share one compiled program, grouped into packs of at most K runs.

`python -m vit_adapt.sweep ... --pack=K` groups runs whose configs agree on everything but the values a pack
may differ in (`vit_adapt.train.packed.pack_key`: seed, learning rate, weight decay, label smoothing, a method's
traced and init fields) into packs of at most K runs, in the order of the sweep; each pack is one job
(`python -m vit_adapt.pack --pack=<dir>/pack.json`) that trains its runs with `train.packed.train_pack` and writes
every run's own directory. Runs that fit no pack (alone in their group) run as before.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from vit_adapt.errors import UserError
from vit_adapt.sweep import grid as sweep_grid
from vit_adapt.sweep import jobs as sweep_jobs
from vit_adapt.train import packed
from vit_adapt.train import workdir as workdir_lib

PACK_FILE = "pack.json"


def plan_packs(runs: Sequence[sweep_grid.Run], size: int) -> list[list[sweep_grid.Run]]:
  """Packs of 2..`size` runs with one `pack_key`, in sweep order; runs whose config fails to load are left out
  (they run on their own and report their error there)."""
  if size < 2:
    return []
  packs = []
  for group in sweep_jobs.by_config_key(runs, lambda c: None if packed.ineligible_reason(c) else packed.pack_key(c)):
    group = [run for run, _ in group]
    packs.extend(group[i:i + size] for i in range(0, len(group), size))
  return [p for p in packs if len(p) >= 2]


def pack_dir(workdir: str, runs: Sequence[sweep_grid.Run]) -> str:
  return sweep_jobs.job_dir(workdir, "_packs", runs, ordered=True)  # a pack's checkpoint stacks runs in order


def pack_command(python: str, workdir: str, runs: Sequence[sweep_grid.Run], pdir: str) -> list[str]:
  """Writes the pack file and returns the job's command line."""
  return sweep_jobs.job_command(python, workdir, runs, pdir, PACK_FILE, "vit_adapt.pack", "pack")


def run_pack_file(path: str) -> int:
  """Trains the pack a pack file describes (unless every run has its results); -> how many runs failed."""
  try:
    with open(path) as f:
      specs = json.load(f)["runs"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"cannot read the pack file {path}: {e}. It is written by `python -m vit_adapt.sweep "
                    "--pack=K`; re-run the sweep to rewrite it.") from None
  configs = [sweep_grid.load_config(s["config"], s["overrides"]) for s in specs]
  workdirs = [s["workdir"] for s in specs]
  if all(workdir_lib.results_match(w, c) for w, c in zip(workdirs, configs)):
    print(f"every run of the pack {path} has its results; nothing to do", flush=True)
    return 0
  # The whole pack trains (and resumes) together: its checkpoint holds every run's state.
  results = packed.train_pack(configs, workdirs, os.path.dirname(os.path.abspath(path)))
  for s, r in zip(specs, results):
    summary = {k: r.get(k) for k in ("task", "method", "seed", "top1", "steps")} if r else {"failed": True}
    print(json.dumps({"run": s["name"], **summary}), flush=True)
  return sum(r is None for r in results)
