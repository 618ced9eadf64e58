"""Packed sweeps: the sweep's runs that can share one compiled program, grouped into packs of at most K runs.

`python -m vit_adapt.sweep ... --pack=K` groups runs whose configs agree on everything but the values a pack
may differ in (`vit_adapt.train.packed.pack_key`: seed, learning rate, weight decay, label smoothing, a method's
traced and init fields) into packs of at most K runs, in the order of the sweep; each pack is one job
(`python -m vit_adapt.pack --pack=<dir>/pack.json`) that trains its runs with `train.packed.train_pack` and writes
every run's own directory. Runs that fit no pack (alone in their group) run as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

from vit_adapt.errors import UserError
from vit_adapt.sweep import grid as sweep_grid
from vit_adapt.train import packed
from vit_adapt.train import workdir as workdir_lib

PACK_FILE = "pack.json"


def plan_packs(runs: Sequence[sweep_grid.Run], size: int) -> list[list[sweep_grid.Run]]:
  """Packs of 2..`size` runs with one `pack_key`, in sweep order; runs whose config fails to load are left out
  (they run on their own and report their error there)."""
  if size < 2:
    return []
  by_key: dict[str, list] = {}
  for run in runs:
    try:
      config = sweep_grid.load_config(run.config, run.overrides)
      if packed.ineligible_reason(config):
        continue
      key = packed.pack_key(config)
    except Exception:  # noqa: BLE001 -- a broken run is reported by its own job, not by the planner
      continue
    by_key.setdefault(key, []).append(run)
  packs = []
  for group in by_key.values():
    packs.extend(group[i:i + size] for i in range(0, len(group), size))
  return [p for p in packs if len(p) >= 2]


def pack_dir(workdir: str, runs: Sequence[sweep_grid.Run]) -> str:
  digest = hashlib.sha1("\n".join(r.name for r in runs).encode()).hexdigest()[:10]
  return os.path.join(workdir, "_packs", runs[0].task, runs[0].config_label, digest)


def pack_command(python: str, workdir: str, runs: Sequence[sweep_grid.Run], pdir: str) -> list[str]:
  """Writes the pack file and returns the job's command line."""
  os.makedirs(pdir, exist_ok=True)
  spec = {"runs": [{"name": r.name, "config": r.config, "overrides": r.overrides,
                    "workdir": os.path.join(workdir, r.name)} for r in runs]}
  with open(os.path.join(pdir, PACK_FILE), "w") as f:
    json.dump(spec, f, indent=1, default=str)
  return [python, "-m", "vit_adapt.pack", f"--pack={os.path.join(pdir, PACK_FILE)}"]


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
