r"""Results of a sweep as the papers' VTAB-1k tables, a CSV and plots.

  python -m vit_adapt.report runs/dyt_vtab [--out=runs/dyt_vtab/report]

Collects every `results.json` under the directory (the sweep's run directories, or any tree of trainer
workdirs) and writes to `--out` (default `<dir>/report/`):

  runs.csv            one line per run: task, row label, grid point, seed, top1, efficiency fields, path
  summary.csv         one line per table row: per-task mean/std/n, group means, efficiency means
  table.md            the Markdown table: 19 VTAB-1k tasks in the canonical order (plus any other task that
                      was run), Natural / Specialized / Structured means, the mean over tasks and the mean of
                      the group means, trainable parameters (M), GMACs and throughput; `mean ± std` over seeds
                      (sample std); '–' where a cell has no result
  accuracy_vs_gmacs.png, per_task.png   (see vit_adapt/sweep/plots.py)

A table row is one (config, grid point without the seed): runs differing only in `seed` are averaged. The
efficiency columns are means over the row's runs and the table states the device, dtype and batch size they were
measured with. Group means over a partial group are marked `*` (mean over the tasks present).

A results.json that is unreadable or invalid (not a JSON object, a top1 that is not a number in [0, 1]) is
skipped with a warning line and listed under the table as dropped, so a partial table never looks complete.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import statistics
import sys
from typing import Any, Iterable


from vit_adapt.sweep import grid as sweep_grid
from vit_adapt.sweep import state as sweep_state
from vit_adapt.errors import UserError

DASH = "–"
GROUP_TITLES = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}
_SEED_KEYS = ("seed",)


# ------------------------------------------------------------------------------------------------ collect
def _sweep_points(root: str) -> dict[str, dict]:
  """run dir (abs) -> {'config_label', 'point'} from the sweep state files under `root` (if any)."""
  out = {}
  for path in glob.glob(os.path.join(root, "**", "sweep_state*.json"), recursive=True):
    for name, rec in sweep_state.load(path).get("runs", {}).items():
      if isinstance(rec, dict):
        # Keyed by the run's place relative to the state file, so a moved sweep directory still matches.
        out[os.path.abspath(os.path.join(os.path.dirname(path), name))] = {
            "point": rec.get("point") or {}, "config_label": rec.get("config_label")}
  return out


def _point_from_dirname(name: str) -> dict:
  """'optim.lr=0.001,seed=1' -> {'optim.lr': '0.001', 'seed': '1'} (values as written in the directory name)."""
  point = {}
  for part in name.split(","):
    k, sep, v = part.partition("=")
    if not sep:
      return {}
    point[k] = v
  return point


def results_problem(res: Any) -> str | None:
  """Why a parsed results.json cannot be reported (None when it can): the fields the tables read must have their
  types, and top1 is a fraction in [0, 1] (a percentage or a string would silently skew every mean)."""
  if not isinstance(res, dict):
    return f"it holds a JSON {type(res).__name__}, not an object"
  top1 = res.get("top1")
  if top1 is not None:
    if isinstance(top1, bool) or not isinstance(top1, (int, float)):
      return f"top1 is {top1!r}, not a number"
    if not 0.0 <= top1 <= 1.0:  # also false for NaN
      return f"top1={top1!r} is outside [0, 1]"
  for key in ("task", "method"):
    if key in res and not isinstance(res[key], str):
      return f"{key} is {res[key]!r}, not a string"
  return None


def collect(root: str, dropped: list[tuple[str, str]] | None = None) -> list[dict]:
  """One dict per valid results.json under `root`: the results plus `label`, `point`, `seed`, `path`.

  An unreadable or invalid file (`results_problem`) is skipped with a warning line on stderr; `dropped` (if
  given) receives its (path relative to `root`, reason), which the report lists under its table.
  """
  root = os.path.abspath(root)
  points = _sweep_points(root)
  rows = []
  for path in sorted(glob.glob(os.path.join(root, "**", sweep_state.RESULTS), recursive=True)):
    try:
      with open(path) as f:
        res = json.load(f)
      problem = results_problem(res)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      problem = f"unreadable ({type(e).__name__}: {e})"
    if problem:
      print(f"warning: skipping {path}: {problem}", file=sys.stderr)
      if dropped is not None:
        dropped.append((os.path.relpath(path, root), problem))
      continue
    run_dir = os.path.dirname(path)
    rel = os.path.relpath(run_dir, root)
    info = points.get(run_dir)
    parts = rel.split(os.sep)
    if info is None:
      # Not in a state file: read the sweep's directory layout <task...>/<config label>/<k=v,...>.
      if len(parts) >= 3:
        info = {"point": _point_from_dirname(parts[-1]) if parts[-1] != "default" else {},
                "config_label": parts[-2]}
      else:
        info = {"point": {}, "config_label": res.get("method", "?")}
    point = dict(info["point"])
    seed = point.pop("seed", res.get("seed", 0))
    hp = ",".join(f"{k}={v}" for k, v in point.items())
    label = info.get("config_label") or res.get("method", "?")
    row = dict(res, label=label + (f" [{hp}]" if hp else ""), config_label=label, point=point, seed=seed,
               path=os.path.relpath(path, root))
    row["task"] = res.get("task") or parts[0]
    rows.append(row)
  return rows


# ------------------------------------------------------------------------------------------------ aggregate
def _mean_std(xs: list[float]) -> tuple[float, float, int]:
  xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
  if not xs:
    return math.nan, math.nan, 0
  return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def task_columns(rows: Iterable[dict]) -> list[str]:
  """The 19 VTAB-1k tasks in canonical order if any VTAB task was run, then every other task run."""
  tasks = []
  for r in rows:
    if r["task"] not in tasks:
      tasks.append(r["task"])
  vtab = list(sweep_grid.VTAB_TASKS) if any(t in sweep_grid.TASK_GROUP for t in tasks) else []
  return vtab + [t for t in tasks if t not in sweep_grid.TASK_GROUP]


def _efficiency_setting(r: dict) -> str:
  bits = [str(r.get("device", "?")), str(r.get("dtype", "?")), f"batch {r.get('batch_size', '?')}"]
  return ", ".join(bits)


def aggregate(rows: list[dict]) -> tuple[list[dict], list[str]]:
  """-> (table rows, task columns). A table row: label, method, per-task stats, group means, efficiency."""
  columns = task_columns(rows)
  by_label: dict[str, list[dict]] = {}
  for r in rows:
    by_label.setdefault(r["label"], []).append(r)
  table = []
  for label, rs in by_label.items():
    t = {"label": label, "method": rs[0].get("method", "?"), "config_label": rs[0].get("config_label"),
         "point": rs[0].get("point", {}), "tasks": {}, "num_runs": len(rs)}
    for task in columns:
      accs = [100.0 * r["top1"] for r in rs if r["task"] == task and r.get("top1") is not None]
      t["tasks"][task] = _mean_std(accs)
    present = {task: s[0] for task, s in t["tasks"].items() if s[2]}
    t["groups"] = {}
    for g, names in sweep_grid.VTAB_GROUPS.items():
      vals = [present[n] for n in names if n in present]
      t["groups"][g] = (statistics.fmean(vals) if vals else math.nan, len(vals), len(names))
    vtab_vals = [v for k, v in present.items() if k in sweep_grid.TASK_GROUP]
    all_vals = list(present.values())
    t["mean"] = (statistics.fmean(all_vals) if all_vals else math.nan, len(all_vals), len(columns))
    gm = [m for m, n, _ in t["groups"].values() if n]
    # (mean, VTAB tasks present, 19): marked partial unless every VTAB task has a result.
    t["group_mean"] = (statistics.fmean(gm) if gm else math.nan, len(vtab_vals), len(sweep_grid.VTAB_TASKS))
    for key, out, scale in (("trainable_params", "params_m", 1e-6), ("gmacs_per_image", "gmacs", 1.0),
                            ("throughput_images_per_s", "throughput", 1.0)):
      vals = [r[key] * scale for r in rs if isinstance(r.get(key), (int, float)) and r.get(key) is not None]
      t[out] = statistics.fmean(vals) if vals else math.nan
    t["efficiency_setting"] = sorted({_efficiency_setting(r) for r in rs})
    table.append(t)
  # Rows by method, then label (a sweep over a knob reads top to bottom).
  table.sort(key=lambda t: (t["method"], t["label"]))
  return table, columns


# ------------------------------------------------------------------------------------------------ format
def _fmt(x: float, digits: int = 1) -> str:
  return DASH if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_sig(x: float) -> str:
  """Two decimals from 1 up (17.56), three significant digits below (0.0326 for a demo-sized model)."""
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return DASH
  return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3g}"


def _fmt_cell(stats: tuple[float, float, int]) -> str:
  mean, std, n = stats
  if not n:
    return DASH
  return f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}"


def _fmt_partial(stat: tuple[float, int, int]) -> str:
  mean, n, total = stat
  if not n:
    return DASH
  return _fmt(mean) + ("*" if n < total else "")


def _short(task: str) -> str:
  return task.split("/", 1)[1] if task.startswith("vtab/") else task


def efficiency_note(table: list[dict]) -> str:
  settings = sorted({s for t in table for s in t["efficiency_setting"]})
  if len(settings) == 1:
    return f"Efficiency (GMACs per image, throughput in images/s) measured on {settings[0]}."
  lines = ["Efficiency (GMACs per image, throughput in images/s) measured per row on:"]
  lines += [f"- {t['label']}: {'; '.join(t['efficiency_setting'])}" for t in table]
  return "\n".join(lines)


def markdown(table: list[dict], columns: list[str], dropped: Iterable[tuple[str, str]] = ()) -> str:
  vtab = [c for c in columns if c in sweep_grid.TASK_GROUP]
  other = [c for c in columns if c not in sweep_grid.TASK_GROUP]
  head = ["Method"] + [_short(c) for c in columns]
  if vtab:
    head += [GROUP_TITLES[g] for g in sweep_grid.VTAB_GROUPS] + ["Mean", "Group mean"]
  elif len(other) > 1:
    head += ["Mean"]
  head += ["Params (M)", "GMACs", "Throughput (img/s)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + [":-:"] * (len(head) - 1)) + "|"]
  for t in table:
    cells = [t["label"]] + [_fmt_cell(t["tasks"][c]) for c in columns]
    if vtab:
      cells += [_fmt_partial(t["groups"][g]) for g in sweep_grid.VTAB_GROUPS]
      cells += [_fmt_partial(t["mean"]), _fmt_partial(t["group_mean"])]
    elif len(other) > 1:
      cells += [_fmt_partial(t["mean"])]
    cells += [_fmt(t["params_m"], 3), _fmt_sig(t["gmacs"]), _fmt(t["throughput"], 1)]
    lines.append("| " + " | ".join(cells) + " |")
  notes = ["", "Top-1 test accuracy (%) of the final model, mean ± sample std over seeds where several ran; "
           f"'{DASH}' = no result."]
  if vtab:
    notes.append("Group columns: mean over the group's tasks (`*` = over the tasks present only); Mean: over all "
                 "tasks present; Group mean: mean of the three group means.")
  notes.append(efficiency_note(table))
  dropped = list(dropped)
  if dropped:
    notes.append(f"Dropped {len(dropped)} invalid results file(s), not counted in the table:")
    notes += [f"- {path}: {why}" for path, why in dropped]
  return "\n".join(lines + notes) + "\n"


# ------------------------------------------------------------------------------------------------ CSV
_RUN_FIELDS = ("task", "label", "method", "seed", "top1", "trainable_params", "gmacs_per_image",
               "throughput_images_per_s", "batch_size", "dtype", "device", "peak_train_memory_bytes",
               "wall_time_s", "steps", "path")


def write_runs_csv(rows: list[dict], path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(_RUN_FIELDS + ("point",))
    for r in rows:
      w.writerow([r.get(k, "") for k in _RUN_FIELDS] + [json.dumps(r.get("point", {}), sort_keys=True)])


def write_summary_csv(table: list[dict], columns: list[str], path: str) -> None:
  head = ["label", "method", "num_runs"]
  for c in columns:
    head += [f"{c}/mean", f"{c}/std", f"{c}/n"]
  head += [f"{g}/mean" for g in sweep_grid.VTAB_GROUPS] + ["mean", "group_mean", "params_m", "gmacs",
                                                           "throughput", "efficiency_setting"]
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(head)
    for t in table:
      row: list[Any] = [t["label"], t["method"], t["num_runs"]]
      for c in columns:
        m, s, n = t["tasks"][c]
        row += ["" if not n else round(m, 4), "" if not n else round(s, 4), n]
      row += ["" if not t["groups"][g][1] else round(t["groups"][g][0], 4) for g in sweep_grid.VTAB_GROUPS]
      row += [_fmt(t["mean"][0], 4) if t["mean"][1] else "", _fmt(t["group_mean"][0], 4) if t["group_mean"][1] else ""]
      row += [_fmt(t["params_m"], 6), _fmt(t["gmacs"], 4), _fmt(t["throughput"], 2),
              "; ".join(t["efficiency_setting"])]
      w.writerow([("" if x == DASH else x) for x in row])


# ------------------------------------------------------------------------------------------------ main
def make_report(root: str, out: str | None = None, plots: bool = True) -> dict:
  """Writes the report files; returns {'table': rows, 'columns': ..., 'markdown': str, 'files': [...],
  'rows', 'dropped': [(path, reason)] of the invalid results files skipped}."""
  if not os.path.isdir(root):
    raise UserError(f"{root!r} is not a directory: give the sweep's --workdir (or any directory of runs).")
  dropped: list[tuple[str, str]] = []
  rows = collect(root, dropped)
  if not rows and dropped:
    raise UserError(f"no valid results.json under {root!r}; every one was dropped: " +
                    "; ".join(f"{p}: {why}" for p, why in dropped) + ". Re-run those runs or fix the files.")
  if not rows:
    raise UserError(f"no results.json under {root!r}: no run has finished yet (see its sweep_state.json and "
                    "the runs' log.txt).")
  out = out or os.path.join(root, "report")
  os.makedirs(out, exist_ok=True)
  table, columns = aggregate(rows)
  md = markdown(table, columns, dropped)
  files = [os.path.join(out, n) for n in ("runs.csv", "summary.csv", "table.md")]
  write_runs_csv(rows, files[0])
  write_summary_csv(table, columns, files[1])
  with open(files[2], "w") as f:
    f.write(md)
  if plots:
    from vit_adapt.sweep import plots as report_plots  # imports matplotlib (heavy): only when plotting
    files += report_plots.plot_all(table, columns, rows, root, out, efficiency_note(table))
  return {"table": table, "columns": columns, "markdown": md, "files": files, "rows": rows, "dropped": dropped}
