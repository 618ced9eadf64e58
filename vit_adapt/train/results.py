"""`results.json`: the one record of a finished run (accuracy, efficiency, provenance), built in one place.

Every trainer path writes it through `build` and `RESULTS_FILE`: the training loop and the sweep's
shared-feature groups, so the schema never forks; the sweep treats a run as done when the file exists.
"""

from __future__ import annotations

import json
import os

import numpy as np

RESULTS_FILE = "results.json"


def path(workdir: str) -> str:
  return os.path.join(workdir, RESULTS_FILE)


def read(workdir: str) -> dict | None:
  """The results.json already in `workdir`, or None when there is none (or it is not a readable JSON object)."""
  try:
    with open(path(workdir)) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  return results if isinstance(results, dict) else None


def read_field(workdir: str, key: str):
  """A field of the results.json already in `workdir` (None when there is none)."""
  return (read(workdir) or {}).get(key)


def build(config, method, task, *, evaluation: dict, num_train: int, steps: int, final_train_loss: float | None,
          efficiency: dict, num_devices: int, wall_time_s: float, **extra) -> dict:
  """The results of one run. `evaluation` is the evaluator's result on `config.dataset.eval_split` (the task's
  metrics and the method's `stats`); the method's statistics follow the fixed fields (a statistic whose name
  is taken gets an `eval_` prefix; a vector statistic becomes a list) and `method_stats` lists their keys. `extra` adds fields (e.g. how a sweep
  shared the work)."""
  metrics = {k: v for k, v in evaluation.items() if k not in ("stats", "notes", "loss", "num_examples")}
  results = {
      "task": config.dataset.name, "method": method.name, **metrics, "primary_metric": task.primary_metric,
      "eval_split": config.dataset.eval_split, "eval_loss": evaluation["loss"],
      "num_eval_examples": evaluation["num_examples"], "train_split": config.dataset.split,
      "num_train_examples": num_train, "steps": steps, "seed": config.seed,
      "selection": "final model (no selection on the evaluation split)",
      "final_train_loss": final_train_loss,
      **efficiency,
      **(task.efficiency_fields(config, efficiency) if task.efficiency_fields is not None else {}),
      "num_devices": num_devices,
      "wall_time_s": wall_time_s,
      **extra,
  }
  stat_keys = []
  for name, value in evaluation.get("stats", {}).items():
    key = name if name not in results else f"eval_{name}"
    # A statistic with K values per example (e.g. MET's `exit_top1`) is a list, in the method's order.
    results[key] = [float(v) for v in value] if np.ndim(value) else value
    stat_keys.append(key)
  results["method_stats"] = stat_keys
  return results
