r"""Early-exit thresholds for a trained MET model (budgeted batch classification, as in MSDNet).

  python -m vit_adapt.met_calibrate --checkpoint=/tmp/met_demo --budget=0.6
  python -m vit_adapt.met_calibrate --checkpoint=runs/met_dtd --split=val200 --gmacs=10.5
  python -m vit_adapt.met_calibrate --checkpoint=runs/met_dtd --q=0.8 --confidence=entropy

The model runs every exit on a held-out split (default: `val200` for VTAB-1k tasks, otherwise the training
split) and records each example's confidence at each exit (max softmax probability, or minus the entropy). A
target exit distribution p_k -- given directly (`--distribution`), geometric p_k ~ q^k (`--q`), or the geometric
distribution whose realised average cost meets a budget (`--budget` as a fraction of the full network's GMACs,
or `--gmacs` absolute) -- is realised exactly on that split: exit k takes the N p_k most confident examples among
those still running, and its threshold sits half-way between the last example it takes and the next one.

Calibrating on data the model trained on (the default outside VTAB-1k, or val200 after training on
train800val200) gives over-confident thresholds: the tool then prints a `warning:` line and records it in
`config.method.calibration`; `--require_held_out` refuses such a split instead. The held-out protocol: train on
`train800` (`--config.dataset.split=train800`), calibrate on `val200`.

The thresholds go into the model directory's `config.json` (`config.method.thresholds`, plus a one-line
`config.method.calibration` record) so `predict`, `efficiency` and the trainer's evaluation use them through
the model's own inference path; `calibration.json` beside it holds the per-exit table printed here.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import jax
import numpy as np

from vit_adapt.errors import UserError
from vit_adapt.checkpoints import model_dir as model_dir_lib
from vit_adapt.data import pipeline
from vit_adapt.methods import build
from vit_adapt.methods.met import exit as met_exit


# ----------------------------------------------------------------------------------------------------------
# Threshold arithmetic (numpy; the same rule as met_exit.select_exit).

def geometric(q: float, k_exits: int) -> np.ndarray:
  """p_k ~ q^k, normalised (q < 1 favours early exits)."""
  w = np.power(float(q), np.arange(k_exits, dtype=np.float64))
  return w / w.sum()


def exits_taken(conf: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
  """conf (K, N) -> exit index (N,): the first k < K-1 with conf_k >= thresholds[k], else K-1."""
  ok = conf[:-1] >= np.asarray(thresholds, np.float64)[:, None]
  ok = np.concatenate([ok, np.ones((1, conf.shape[1]), bool)])
  return np.argmax(ok, axis=0)


def thresholds_for_distribution(conf: np.ndarray, p: Sequence[float]) -> tuple[float, ...]:
  """Thresholds (K-1,) under which exactly round(N * cumsum(p)) examples have left after each exit (no ties)."""
  k_exits, n = conf.shape
  p = np.asarray(p, np.float64)
  if p.shape != (k_exits,) or np.any(p < 0) or p.sum() <= 0:
    raise UserError(f"the exit distribution must have {k_exits} non-negative entries, got {p.tolist()}.")
  cum = np.round(n * np.cumsum(p / p.sum())).astype(int)
  counts = np.diff(np.concatenate([[0], cum]))
  running = np.ones(n, bool)
  margin = 1.0 + float(np.max(np.abs(conf))) if conf.size else 1.0
  out = []
  for k in range(k_exits - 1):
    c = conf[k][running]
    order = np.sort(c)[::-1]
    take = min(int(counts[k]), c.size)
    if take == 0:
      tau = margin  # above every confidence: nobody leaves here
    elif take == c.size:
      tau = -margin  # everybody still running leaves
    else:
      tau = float((order[take - 1] + order[take]) / 2)
    out.append(tau)
    running &= ~(conf[k] >= tau)
  return tuple(float(t) for t in out)


def average_cost(exit_idx: np.ndarray, exit_gmacs: Sequence[float]) -> float:
  return float(np.mean(np.asarray(exit_gmacs, np.float64)[exit_idx])) if exit_idx.size else float("nan")


def thresholds_for_budget(conf: np.ndarray, exit_gmacs: Sequence[float], target: float
                          ) -> tuple[tuple[float, ...], float]:
  """Thresholds of the geometric distribution whose realised average GMACs on `conf` is closest to `target`.

  The realised cost grows with q; bisection on log q. Returns (thresholds, q).
  """
  lo_cost, hi_cost = float(exit_gmacs[0]), float(exit_gmacs[-1])
  if not lo_cost <= target <= hi_cost * (1 + 1e-9):
    raise UserError(f"a budget of {target:.4g} GMACs per image is outside what this model can spend: from "
                    f"{lo_cost:.4g} (everyone at the first exit) to {hi_cost:.4g} (the full network).")
  k_exits = conf.shape[0]

  def cost(log_q):
    th = thresholds_for_distribution(conf, geometric(math.exp(log_q), k_exits))
    return average_cost(exits_taken(conf, th), exit_gmacs), th

  lo, hi = -12.0, 12.0
  best = None
  for _ in range(60):
    mid = (lo + hi) / 2
    c, th = cost(mid)
    if best is None or abs(c - target) < abs(best[0] - target):
      best = (c, th, math.exp(mid))
    if c < target:
      lo = mid
    else:
      hi = mid
  return best[1], best[2]


def exit_table(conf, correct, thresholds, exit_gmacs) -> dict:
  """Per-exit share of examples, accuracy of every exit on all examples ("anytime"), and the dynamic result."""
  idx = exits_taken(conf, thresholds)
  k_exits, n = conf.shape
  dyn_correct = correct[idx, np.arange(n)]
  return {
      "num_examples": int(n),
      "exit_gmacs": [float(g) for g in exit_gmacs],
      "exit_fraction": [float(np.mean(idx == k)) for k in range(k_exits)],
      "exit_accuracy": [float(np.mean(correct[k])) for k in range(k_exits)],
      "accuracy": float(np.mean(dyn_correct)),
      "avg_gmacs": average_cost(idx, exit_gmacs),
      "thresholds": [float(t) for t in thresholds],
  }


# ----------------------------------------------------------------------------------------------------------
# Running the model.

def exit_outputs(config, model, variables, split: str, *, batch_size: int = 256):
  """Every exit's confidence and correctness on `split`: -> (conf (K, N) float64, correct (K, N) bool)."""
  dense = model.clone(thresholds=(), inference="last")
  kind = model.confidence

  @jax.jit
  def step(v, images):
    _, out = dense.apply(v, images, train=False)
    lg = out["exit_logits"]
    return met_exit.confidence(lg, kind), jax.numpy.argmax(lg, axis=-1)

  confs, correct = [], []
  for batch in pipeline.eval_batches(config, split, batch_size=batch_size):
    c, pred = jax.device_get(step(variables, batch["image"]))
    keep = np.asarray(batch["mask"], bool)
    confs.append(np.asarray(c, np.float64)[:, keep])
    correct.append((np.asarray(pred) == np.asarray(batch["label"])[None])[:, keep])
  if not confs:
    raise UserError(f"split {split!r} of {config.dataset.name} is empty: nothing to calibrate on.")
  return np.concatenate(confs, axis=1), np.concatenate(correct, axis=1)


def default_split(config) -> str:
  """val200 for VTAB-1k tasks (the held-out part of train800val200), otherwise the training split."""
  return "val200" if config.dataset.name.startswith("vtab/") else config.dataset.split


def write_thresholds(model_dir: str, thresholds, confidence: str, record: str, table: dict) -> None:
  """Rewrites DIR/config.json with the thresholds (atomically) and writes DIR/calibration.json."""
  config = model_dir_lib.read_config(model_dir)
  config.method.thresholds = tuple(float(t) for t in thresholds)
  config.method.confidence = confidence
  config.method.calibration = record
  path = os.path.join(model_dir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)
  with open(os.path.join(model_dir, "calibration.json"), "w") as f:
    json.dump(table, f, indent=2)


def format_table(table: dict, exits: Sequence[int], full_gmacs: float) -> str:
  lines = ["exit  after block   GMACs  (of full)  thresh.   share   accuracy(all examples)"]
  for k, blk in enumerate(exits):
    th = f"{table['thresholds'][k]:8.4f}" if k < len(table["thresholds"]) else "       -"
    lines.append(f"{k:4d}  {blk:11d}  {table['exit_gmacs'][k]:7.4g}  {table['exit_gmacs'][k] / full_gmacs:8.3f}  "
                 f"{th}  {table['exit_fraction'][k]:6.3f}   {table['exit_accuracy'][k]:.4f}")
  lines.append(f"early exit: accuracy {table['accuracy']:.4f}, average {table['avg_gmacs']:.4g} GMACs "
               f"({table['avg_gmacs'] / full_gmacs:.3f} of full) on {table['num_examples']} examples")
  return "\n".join(lines)


def calibrate(checkpoint: str, *, split: str = "", budget: float = 0.0, gmacs: float = 0.0, q: float = 0.0,
              distribution: Sequence[float] = (), confidence: str = "", batch_size: int = 256,
              write: bool = True, require_held_out: bool = False) -> dict:
  """Library form of the CLI; returns the per-exit table (plus 'split', 'record' and 'warning': '' when the split
  is held out from the training split). `require_held_out` refuses a split the model trained on."""
  model_dir = model_dir_lib.resolve_model_dir(checkpoint)
  config, model, method, variables = build.load_model_dir(model_dir)
  if config.method.name != "met":
    raise UserError(f"{model_dir} holds a {config.method.name!r} model; thresholds are for MET models. For the "
                    "budget knobs of other methods use `python -m vit_adapt.curve`.")
  if confidence:
    if confidence not in met_exit.CONFIDENCES:
      raise UserError(f"--confidence={confidence!r}: use one of {sorted(met_exit.CONFIDENCES)}.")
    model = model.clone(confidence=confidence)
  targets = sum(bool(x) for x in (budget, gmacs, q, len(distribution)))
  if targets != 1:
    raise UserError("give exactly one target: --budget=FRACTION_OF_FULL_GMACS, --gmacs=G, --q=RATIO or "
                    "--distribution=P0,P1,...")
  split = split or default_split(config)
  warning = training_data_warning(split, config.dataset.split)
  if warning and require_held_out:
    raise UserError(f"{warning} --require_held_out refuses it: pass --split=SPLIT with a split the model did not "
                    "train on, or retrain on a part of the data (configs/met_vtab.py: train800, then val200).")
  if config.method.get("calibration"):
    print(f"replacing the thresholds of: {config.method.calibration}")
  conf, correct = exit_outputs(config, model, variables, split, batch_size=batch_size)
  costs = model.exit_gmacs
  if budget or gmacs:
    target = gmacs or budget * costs[-1]
    thresholds, q_used = thresholds_for_budget(conf, costs, target)
    what = f"budget {target:.4g} GMACs (geometric q={q_used:.4g})"
  elif q:
    thresholds = thresholds_for_distribution(conf, geometric(q, len(costs)))
    what = f"geometric q={q:g}"
  else:
    thresholds = thresholds_for_distribution(conf, distribution)
    what = f"distribution {','.join(f'{p:g}' for p in distribution)}"
  table = exit_table(conf, correct, thresholds, costs)
  record = (f"{model.confidence} thresholds from {split!r} of {config.dataset.name} ({table['num_examples']} "
            f"examples), {what}: realised {table['avg_gmacs']:.4g} GMACs, accuracy {table['accuracy']:.4f}")
  if warning:
    record += f"; warning: {warning}"
  table.update(split=split, record=record, confidence=model.confidence, warning=warning)
  if write:
    write_thresholds(model_dir, thresholds, model.confidence, record, table)
  table["model_dir"] = model_dir
  table["exits"] = list(model.exits)
  return table


def training_splits(train_split: str) -> set[str]:
  """The splits a model trained on `train_split` has seen: itself and its parts (train800val200 = train800 +
  val200, FGVC's train+val = train + val)."""
  parts = set(train_split.split("+")) | {train_split}
  return parts | ({"train800", "val200"} if train_split == "train800val200" else set())


def training_data_warning(split: str, train_split: str) -> str:
  """'' when `split` is held out from `train_split`, else why thresholds from it are over-confident."""
  if split not in training_splits(train_split):
    return ""
  return (f"calibrating on {split!r}, which is inside the training split {train_split!r}: the model has fitted "
          "these examples, so its confidences are over-confident and the thresholds let too many examples leave "
          "early (the realised budget and accuracy on new data differ from the ones printed here). For held-out "
          "thresholds train on train800 and calibrate on val200 (configs/met_vtab.py).")
