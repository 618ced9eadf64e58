"""MET's budget knob: a target average GMACs as a fraction of the full network; the exit thresholds are calibrated
on a held-out split (`calibrate.py`) and the model is measured on the evaluation split."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vit_adapt.methods import base
from vit_adapt.methods.met import calibrate as met_calibrate

# ----------------------------------------------------------------------------------------------------------
# MET: thresholds for a GMACs budget. The sweep evaluates the first-confident-exit rule on every exit's logits
# (computed once per split), which is exactly what the early-exit pass returns (tests/test_met.py).

def _met_outputs(ctx: base.KnobContext, split: str):
  if split not in ctx.cache:
    ctx.cache[split] = met_calibrate.exit_outputs(ctx.config, ctx.model, ctx.variables, split,
                                                  batch_size=ctx.batch_size)
  return ctx.cache[split]


def _met_calib_split(ctx: base.KnobContext) -> str:
  return ctx.calib_split or met_calibrate.default_split(ctx.config)


def _met_thresholds(ctx: base.KnobContext, value: float):
  costs = ctx.model.exit_gmacs
  conf, _ = _met_outputs(ctx, _met_calib_split(ctx))
  target = min(max(value * costs[-1], costs[0]), costs[-1])
  return met_calibrate.thresholds_for_budget(conf, costs, target)[0]


def met_apply(ctx: base.KnobContext, value: float):
  return base.with_method_fields(ctx.config, thresholds=_met_thresholds(ctx, value), inference="early_exit"), \
      ctx.variables


def met_sweep(ctx: base.KnobContext, values: Sequence[float]) -> list[dict]:
  conf, correct = _met_outputs(ctx, ctx.split)
  rows = []
  for v in values:
    table = met_calibrate.exit_table(conf, correct, _met_thresholds(ctx, v), ctx.model.exit_gmacs)
    rows.append({"value": float(v), "gmacs": table["avg_gmacs"], "accuracy": table["accuracy"],
                 "detail": "exit shares " + " ".join(f"{f:.3f}" for f in table["exit_fraction"])})
  return rows


def met_extras(ctx: base.KnobContext) -> list[dict]:
  _, correct = _met_outputs(ctx, ctx.split)
  return [{"kind": "exit", "value": k, "gmacs": float(g), "accuracy": float(np.mean(correct[k])),
           "detail": f"exit {k} after block {blk}"}
          for k, (g, blk) in enumerate(zip(ctx.model.exit_gmacs, ctx.model.exits))]


def met_values(ctx: base.KnobContext) -> Sequence[float]:
  costs = ctx.model.exit_gmacs
  return tuple(np.round(np.linspace(costs[0] / costs[-1], 1.0, 12), 4))


KNOB = base.Knob("budget (fraction of full GMACs)", met_values, met_apply, sweep=met_sweep, extras=met_extras)
