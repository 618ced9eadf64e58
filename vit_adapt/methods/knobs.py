"""Budget knobs: per method, the one setting that trades accuracy for inference compute without retraining.

`python -m vit_adapt.curve` sweeps a knob and plots accuracy against average GMACs, so methods with very different
mechanisms land on one plot. A knob maps a trained model (`Context`) and a knob value to the config and variables
of the model at that value (`apply`); the curve command builds that model and evaluates it through its own
inference path. A knob may also give a faster exact evaluation of a whole sweep (`sweep`) and extra points
(`extras`, e.g. MET's single exits). Register one per method name in KNOBS:

  met            budget = target average GMACs as a fraction of the full network; thresholds calibrated on a
                 held-out split (met_calibrate), measured on the evaluation split
  dyt            capacity_rate with `inference='capacity'` (fraction of patch tokens through each MLP)
  sparse_tuning  keep_rate (fraction of patch tokens kept at each sparse block)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np


@dataclasses.dataclass
class Context:
  """One trained model being swept."""
  config: ml_collections.ConfigDict
  model: Any
  variables: dict
  split: str            # evaluation split
  calib_split: str      # held-out split for calibrated knobs ('' = the knob's default)
  batch_size: int
  cache: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Knob:
  label: str                                                   # what the value means (CSV column 'knob')
  default_values: Callable[[Context], Sequence[float]]
  apply: Callable[[Context, float], tuple[ml_collections.ConfigDict, dict]]
  # Optional exact fast path for a whole sweep: (ctx, values) -> rows {'value', 'gmacs', 'accuracy', ...}.
  sweep: Callable[[Context, Sequence[float]], list[dict]] | None = None
  # Optional extra points (ctx) -> rows with a 'kind' other than 'sweep' (e.g. 'exit').
  extras: Callable[[Context], list[dict]] | None = None


def with_method_fields(config, **fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.method.update(fields)
  return config


# ----------------------------------------------------------------------------------------------------------
# MET: thresholds for a GMACs budget. The sweep evaluates the first-confident-exit rule on every exit's logits
# (computed once per split), which is exactly what the early-exit pass returns (tests/test_met.py).

def _met_outputs(ctx: Context, split: str):
  from vit_adapt.methods.met import calibrate as met_calibrate
  if split not in ctx.cache:
    ctx.cache[split] = met_calibrate.exit_outputs(ctx.config, ctx.model, ctx.variables, split,
                                                  batch_size=ctx.batch_size)
  return ctx.cache[split]


def _met_calib_split(ctx: Context) -> str:
  from vit_adapt.methods.met import calibrate as met_calibrate
  return ctx.calib_split or met_calibrate.default_split(ctx.config)


def _met_thresholds(ctx: Context, value: float):
  from vit_adapt.methods.met import calibrate as met_calibrate
  costs = ctx.model.exit_gmacs
  conf, _ = _met_outputs(ctx, _met_calib_split(ctx))
  target = min(max(value * costs[-1], costs[0]), costs[-1])
  return met_calibrate.thresholds_for_budget(conf, costs, target)[0]


def met_apply(ctx: Context, value: float):
  return with_method_fields(ctx.config, thresholds=_met_thresholds(ctx, value), inference="early_exit"), \
      ctx.variables


def met_sweep(ctx: Context, values: Sequence[float]) -> list[dict]:
  from vit_adapt.methods.met import calibrate as met_calibrate
  conf, correct = _met_outputs(ctx, ctx.split)
  rows = []
  for v in values:
    table = met_calibrate.exit_table(conf, correct, _met_thresholds(ctx, v), ctx.model.exit_gmacs)
    rows.append({"value": float(v), "gmacs": table["avg_gmacs"], "accuracy": table["accuracy"],
                 "detail": "exit shares " + " ".join(f"{f:.3f}" for f in table["exit_fraction"])})
  return rows


def met_extras(ctx: Context) -> list[dict]:
  _, correct = _met_outputs(ctx, ctx.split)
  return [{"kind": "exit", "value": k, "gmacs": float(g), "accuracy": float(np.mean(correct[k])),
           "detail": f"exit {k} after block {blk}"}
          for k, (g, blk) in enumerate(zip(ctx.model.exit_gmacs, ctx.model.exits))]


def met_values(ctx: Context) -> Sequence[float]:
  costs = ctx.model.exit_gmacs
  return tuple(np.round(np.linspace(costs[0] / costs[-1], 1.0, 12), 4))


# ----------------------------------------------------------------------------------------------------------
# DyT and Sparse-Tuning: a config field, the model evaluated as is.

def dyt_apply(ctx: Context, value: float):
  return with_method_fields(ctx.config, inference="capacity", capacity_rate=float(value)), ctx.variables


def sparse_tuning_apply(ctx: Context, value: float):
  return with_method_fields(ctx.config, keep_rate=float(value)), ctx.variables


KNOBS: dict[str, Knob] = {
    "met": Knob("budget (fraction of full GMACs)", met_values, met_apply, sweep=met_sweep, extras=met_extras),
    "dyt": Knob("capacity_rate", lambda ctx: (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), dyt_apply),
    "sparse_tuning": Knob("keep_rate", lambda ctx: (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                          sparse_tuning_apply),
}
