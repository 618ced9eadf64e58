"""Jobs that train several runs of a sweep in one process: shared-feature groups (`sweep/shared_features.py`)
and packs (`sweep/pack.py`). What they share: grouping the runs by a key of their configs, the job's directory
and the job file (`{"runs": [...]}`) its command reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Sequence

from vit_adapt.sweep import grid as sweep_grid


def by_config_key(runs: Sequence[sweep_grid.Run], key: Callable) -> list[list[tuple[sweep_grid.Run, object]]]:
  """The runs grouped by `key(config)` (None = the run joins no group), in sweep order: lists of (run, config).

  A run whose config fails to load (or to key) is left out: it runs on its own and reports its error there.
  """
  groups: dict[str, list] = {}
  for run in runs:
    try:
      config = sweep_grid.load_config(run.config, run.overrides)
      k = key(config)
    except Exception:  # noqa: BLE001 -- a broken run is reported by its own job, not by the planner
      continue
    if k is not None:
      groups.setdefault(k, []).append((run, config))
  return list(groups.values())


def job_dir(workdir: str, area: str, runs: Sequence[sweep_grid.Run], *, ordered: bool) -> str:
  """`workdir/<area>/<task>/<config>/<digest of the run names>`; `ordered`: the order of the runs matters."""
  names = [r.name for r in runs] if ordered else sorted(r.name for r in runs)
  digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:10]
  return os.path.join(workdir, area, runs[0].task, runs[0].config_label, digest)


def job_command(python: str, workdir: str, runs: Sequence[sweep_grid.Run], directory: str, file_name: str,
                module: str, flag: str) -> list[str]:
  """Writes `directory/file_name` (the runs' names, configs, overrides and workdirs) -> the job's command line
  `python -m <module> --<flag>=<that file>`."""
  os.makedirs(directory, exist_ok=True)
  spec = {"runs": [{"name": r.name, "config": r.config, "overrides": r.overrides,
                    "workdir": os.path.join(workdir, r.name)} for r in runs]}
  path = os.path.join(directory, file_name)
  with open(path, "w") as f:
    json.dump(spec, f, indent=1, default=str)
  return [python, "-m", module, f"--{flag}={path}"]
