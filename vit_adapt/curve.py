r"""Accuracy vs average GMACs of trained models, by sweeping each method's budget knob (no retraining).

  python -m vit_adapt.curve --checkpoint=/tmp/met_demo --output=docs/met_curve
  python -m vit_adapt.curve --checkpoint=runs/met_dtd --checkpoint=runs/dyt_dtd --checkpoint=runs/st_dtd \
      --output=dtd_curve

With `--runs=SWEEP_DIR --runs_key=method.target_rate` it adds one point per model trained in a sweep (the papers'
protocol for DyT: one model per target rate), labelled apart from the knob swept on one model.

For each checkpoint (a model directory or a training workdir) the method's knob (`Method.budget_knob`: MET's
GMACs budget, DyT's capacity rate, Sparse-Tuning's keep rate) is set to each value of `--values` (default: the
knob's own range) and the model is evaluated on `--split` (default: the config's eval split). Average GMACs come
from the method's per-example `gmacs` statistic when it has one (input-dependent compute), otherwise from the
compiled inference program. MET also adds its single exits ("anytime" accuracy of each exit at its cost).

Writes OUTPUT.csv (method, label, kind, knob, value, gmacs, accuracy, detail) and OUTPUT.png (matplotlib, Agg).
"""

from __future__ import annotations

import csv
import glob
import json
import os
from typing import Sequence

from vit_adapt import cli
from vit_adapt.errors import UserError
from vit_adapt.train import results as results_lib

FIELDS = ("method", "label", "kind", "knob", "value", "gmacs", "accuracy", "detail")


def evaluate_at(ctx, knob, value: float) -> dict:
  """The generic path: build the model at this knob value and evaluate it through its own inference."""
  from vit_adapt import methods, tasks
  from vit_adapt.efficiency import report as efficiency
  from vit_adapt.train import evaluate
  from vit_adapt.train import mesh as mesh_lib
  config, variables = knob.apply(ctx, value)
  model, method = methods.build_model(config)
  task = tasks.for_config(config)
  mesh = mesh_lib.make_mesh()
  variables = mesh_lib.replicate(variables, mesh_lib.replicated(mesh))
  result = evaluate.Evaluator(model, method, task, mesh)(
      variables, task.eval_batches(config, ctx.split, batch_size=ctx.batch_size))
  gmacs = result["stats"].get("gmacs")
  if gmacs is None:
    gmacs = efficiency.gmacs_per_example(model, variables, task.example_input(config, 1))
  return {"value": float(value), "gmacs": float(gmacs), "accuracy": float(result[task.primary_metric]), "detail": ""}


def sweep_checkpoint(checkpoint: str, *, values: Sequence[float] = (), split: str = "", calib_split: str = "",
                     batch_size: int = 256, label: str = "") -> list[dict]:
  from vit_adapt import methods
  from vit_adapt.methods import base
  config, model, method, variables = methods.load_model_dir(checkpoint)
  name = method.name
  knob = method.budget_knob
  if knob is None:
    with_knob = [n for n in methods.names() if methods.get(n).budget_knob is not None]
    raise UserError(f"{checkpoint} holds a {name!r} model, which has no budget knob (methods with one: "
                    f"{', '.join(with_knob)}). Its cost is fixed: see `python -m vit_adapt.efficiency`.")
  ctx = base.KnobContext(config, model, variables, split or config.dataset.eval_split, calib_split, batch_size)
  values = tuple(values) or tuple(knob.default_values(ctx))
  rows = knob.sweep(ctx, values) if knob.sweep else [evaluate_at(ctx, knob, v) for v in values]
  rows = [{"kind": "sweep", **r} for r in rows]
  if knob.extras:
    rows += knob.extras(ctx)
  label = label or f"{name} ({os.path.basename(os.path.normpath(checkpoint))})"
  return [{"method": name, "label": label, "knob": knob.label, "detail": "", **r} for r in rows]


def trained_points(directory: str, key: str = "") -> list[dict]:
  """One point per finished training run under `directory` (a sweep): its average GMACs and top-1 from
  `results.json`, and the value of the config field `key` (dotted, e.g. 'method.target_rate') from its
  `config.json`. This is how the papers draw a curve: one model trained per setting (DyT's target rates),
  beside a knob swept on one trained model."""
  rows = []
  for path in sorted(glob.glob(os.path.join(directory, "**", results_lib.RESULTS_FILE), recursive=True)):
    run_dir = os.path.dirname(path)
    try:
      with open(path) as f:
        results = json.load(f)
      with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f"cannot read the run in {run_dir} ({e}); --runs wants finished training workdirs.") from None
    value = config
    for part in (key.split(".") if key else ()):
      if not isinstance(value, dict) or part not in value:
        raise UserError(f"--runs_key={key!r}: {run_dir}/config.json has no field {key!r}.")
      value = value[part]
    rows.append({"method": results["method"], "label": f"{results['method']}: one model per {key or 'run'}",
                 "kind": "trained", "knob": key, "value": float(value) if key else len(rows),
                 "gmacs": float(results["gmacs_per_image"]), "accuracy": float(results["top1"]),
                 "detail": os.path.relpath(run_dir, directory)})
  if not rows:
    raise UserError(f"--runs={directory}: no results.json below it (finished training runs).")
  return rows


def write_csv(rows: list[dict], path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=FIELDS)
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in FIELDS})


def plot(rows: list[dict], path: str, title: str = "") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.6, 3.9), dpi=110)
  labels = list(dict.fromkeys(r["label"] for r in rows))
  for i, label in enumerate(labels):
    color = f"C{i}"
    sweep = sorted((r for r in rows if r["label"] == label and r["kind"] == "sweep"), key=lambda r: r["gmacs"])
    if sweep:
      ax.plot([r["gmacs"] for r in sweep], [100 * r["accuracy"] for r in sweep], "o-", color=color, ms=3.5,
              label=f"{label}: {sweep[0]['knob']}")
    trained = sorted((r for r in rows if r["label"] == label and r["kind"] == "trained"), key=lambda r: r["gmacs"])
    if trained:
      ax.plot([r["gmacs"] for r in trained], [100 * r["accuracy"] for r in trained], "^--", color=color, ms=5,
              label=label)
      for r in trained:
        ax.annotate(f"{r['value']:g}", (r["gmacs"], 100 * r["accuracy"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color=color)
    exits = sorted((r for r in rows if r["label"] == label and r["kind"] == "exit"), key=lambda r: r["gmacs"])
    if exits:
      ax.plot([r["gmacs"] for r in exits], [100 * r["accuracy"] for r in exits], "s:", color=color, ms=5,
              mfc="none", label=f"{label}: single exits")
      for r in exits:
        ax.annotate(str(r["value"]), (r["gmacs"], 100 * r["accuracy"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7, color=color)
  ax.set_xlabel("average GMACs per image")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def run(checkpoints: Sequence[str], output: str, *, values: Sequence[float] = (), split: str = "",
        calib_split: str = "", batch_size: int = 256, labels: Sequence[str] = (), title: str = "",
        runs: Sequence[str] = (), runs_key: str = "") -> list[dict]:
  if labels and len(labels) != len(checkpoints):
    raise UserError(f"--label was given {len(labels)} times for {len(checkpoints)} checkpoints; give one per "
                    "--checkpoint or none.")
  rows = []
  for i, ckpt in enumerate(checkpoints):
    rows += sweep_checkpoint(ckpt, values=values, split=split, calib_split=calib_split, batch_size=batch_size,
                             label=labels[i] if labels else "")
  for directory in runs:
    rows += trained_points(directory, runs_key)
  directory = os.path.dirname(os.path.abspath(output))
  os.makedirs(directory, exist_ok=True)
  write_csv(rows, output + ".csv")
  plot(rows, output + ".png", title)
  return rows


def format_rows(rows: list[dict]) -> str:
  lines = [f"{'label':28s} {'kind':5s} {'value':>8s} {'GMACs':>9s} {'top-1':>7s}  detail"]
  for r in rows:
    lines.append(f"{r['label'][:28]:28s} {r['kind']:5s} {r['value']:8.4g} {r['gmacs']:9.5g} "
                 f"{100 * r['accuracy']:6.2f}%  {r['detail']}")
  return "\n".join(lines)


def main(argv):
  from absl import flags
  fl = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  if not fl.checkpoint and not fl.runs:
    raise UserError("give at least one --checkpoint=DIR (a model directory or a training workdir) or --runs=DIR "
                    "(a sweep of trained runs).")
  try:
    values = tuple(float(v) for v in fl.values.split(",")) if fl.values else ()
  except ValueError:
    raise UserError(f"--values={fl.values!r}: give comma-separated numbers, e.g. 0.4,0.6,0.8,1.0") from None
  rows = run(fl.checkpoint or (), fl.output, values=values, split=fl.split, calib_split=fl.calib_split,
             batch_size=fl.batch_size, labels=fl.label or (), title=fl.title, runs=fl.runs or (),
             runs_key=fl.runs_key)
  print(format_rows(rows))
  print(f"wrote {fl.output}.csv and {fl.output}.png")


if __name__ == "__main__":
  from absl import flags
  flags.DEFINE_multi_string("checkpoint", None, "Model directory or training workdir (repeat to compare).")
  flags.DEFINE_multi_string("label", None, "Legend label per --checkpoint (default: method (directory)).")
  flags.DEFINE_string("output", "curve", "Output prefix: writes PREFIX.csv and PREFIX.png.")
  flags.DEFINE_string("values", "", "Knob values to sweep, comma-separated (default: each knob's range).")
  flags.DEFINE_string("split", "", "Evaluation split (default: the config's eval split).")
  flags.DEFINE_string("calib_split", "", "Held-out split for calibrated knobs (MET; default val200 for VTAB-1k, "
                      "else the training split).")
  flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
  flags.DEFINE_string("title", "", "Plot title.")
  flags.DEFINE_multi_string("runs", None, "A sweep directory of finished runs: one point per trained model "
                            "(repeatable), e.g. DyT trained per method.target_rate.")
  flags.DEFINE_string("runs_key", "", "The config field that tells the --runs points apart (dotted), e.g. "
                      "method.target_rate.")
  cli.run(main)
