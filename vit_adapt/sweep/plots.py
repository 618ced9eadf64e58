"""The report's PNG plots (matplotlib, Agg backend: no display needed).

  accuracy_vs_gmacs.png   mean top-1 over the tasks a row has vs GMACs per image: one point per table row; rows of
                          the same method that differ in a grid value (a budget knob such as a keep rate) are
                          joined into a curve in GMACs order, and budget curves written by `vit_adapt.curve`
                          into a run directory (`python -m vit_adapt.curve --checkpoint=RUN --output=RUN/curve`:
                          `curve*.csv`, one line per knob value with `gmacs` and `accuracy`) are drawn as dashed
                          curves, averaged over the runs of a row
  per_task.png            grouped bars: per task, one bar per row (mean over seeds, sample-std error bars)

Both state the device, dtype and batch size of the efficiency numbers.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import statistics
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def _read_curve(path: str) -> list[tuple[float, float]]:
  """A budget curve CSV -> [(gmacs, top1 in %)] sorted by GMACs; columns `gmacs*` and `top1`/`accuracy`."""
  try:
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
  except OSError:
    return []
  if not rows:
    return []
  keys = rows[0].keys()
  gk = next((k for k in keys if k.lower().startswith("gmacs")), None)
  ak = next((k for k in keys if k.lower() in ("top1", "accuracy", "acc")), None)
  if gk is None or ak is None:
    return []
  if "kind" in keys:  # vit_adapt.curve also writes single points (e.g. MET's individual exits): keep the sweep
    rows = [r for r in rows if r.get("kind") in ("sweep", "")]
  pts = []
  for r in rows:
    try:
      g, a = float(r[gk]), float(r[ak])
    except (TypeError, ValueError):
      continue
    pts.append((g, 100.0 * a if a <= 1.0 else a))
  return sorted(pts)


def _row_curves(runs: list[dict], root: str) -> dict[str, list[tuple[float, float]]]:
  """label -> the row's budget curve, averaged point-wise over its runs (same budgets in each file)."""
  by_label: dict[str, list[list[tuple[float, float]]]] = {}
  for r in runs:
    run_dir = os.path.join(root, os.path.dirname(r["path"]))
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "curve*.csv"), recursive=True)):
      pts = _read_curve(path)
      if pts:
        by_label.setdefault(r["label"], []).append(pts)
  out = {}
  for label, curves in by_label.items():
    n = min(len(c) for c in curves)
    out[label] = sorted((statistics.fmean(c[i][0] for c in curves), statistics.fmean(c[i][1] for c in curves))
                        for i in range(n))
  return out


def _wrap(text: str, width: int = 100) -> str:
  return "\n".join(textwrap.wrap(text, width))


def accuracy_vs_gmacs(table: list[dict], runs: list[dict], root: str, path: str, note: str) -> str | None:
  pts = [(t, t["gmacs"], t["mean"][0]) for t in table if _finite(t["gmacs"]) and _finite(t["mean"][0])]
  curves = _row_curves(runs, root)
  if not pts and not curves:
    return None
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
  colors = {}
  cmap = plt.get_cmap("tab10")
  for t, g, a in pts:
    colors.setdefault(t["method"], cmap(len(colors) % 10))
  by_method: dict[str, list] = {}
  for t, g, a in pts:
    by_method.setdefault(t["method"], []).append((g, a, t))
  for method, items in by_method.items():
    items.sort(key=lambda x: x[0])
    xs, ys = [x[0] for x in items], [x[1] for x in items]
    ax.plot(xs, ys, "o-" if len(items) > 1 else "o", color=colors[method], label=method, markersize=6)
    if len(items) > 1 or len(by_method) > 1:
      for g, a, t in items:
        text = t["label"] if len(items) > 1 else ""
        if text:
          ax.annotate(text, (g, a), textcoords="offset points", xytext=(4, 4), fontsize=6, color=colors[method])
  for label, curve in curves.items():
    method = next((t["method"] for t in table if t["label"] == label), label)
    colors.setdefault(method, cmap(len(colors) % 10))
    ax.plot([p[0] for p in curve], [p[1] for p in curve], "--.", color=colors[method], alpha=0.8,
            label=f"{label} (budget curve)")
  ntasks = sorted({t["mean"][1] for t, _, _ in pts})
  ax.set_xlabel("GMACs per image")
  ax.set_ylabel("mean top-1 (%)" + (f" over {ntasks[0]} task(s)" if len(ntasks) == 1 else " over the tasks run"))
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  ax.set_title("Accuracy vs compute", fontsize=10)
  fig.text(0.01, 0.01, _wrap(note, 110), fontsize=6, va="bottom")
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.savefig(path)
  plt.close(fig)
  return path


def per_task_bars(table: list[dict], columns: list[str], path: str, note: str) -> str | None:
  cols = [c for c in columns if any(t["tasks"][c][2] for t in table)]
  if not cols or not table:
    return None
  n = len(table)
  width = 0.8 / n
  fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(cols) * max(1, n / 2) + 2), 4.2), dpi=100)
  cmap = plt.get_cmap("tab10")
  for i, t in enumerate(table):
    xs = [j + (i - (n - 1) / 2) * width for j in range(len(cols))]
    means = [t["tasks"][c][0] if t["tasks"][c][2] else 0.0 for c in cols]
    stds = [t["tasks"][c][1] if t["tasks"][c][2] else 0.0 for c in cols]
    ax.bar(xs, means, width, yerr=stds, capsize=2, label=t["label"], color=cmap(i % 10))
  ax.set_xticks(range(len(cols)))
  ax.set_xticklabels([c.split("/", 1)[-1] for c in cols], rotation=45 if len(cols) > 4 else 0, ha="right"
                     if len(cols) > 4 else "center", fontsize=8)
  ax.set_ylabel("top-1 (%)")
  ax.set_ylim(0, 100)
  ax.grid(True, axis="y", alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  ax.set_title("Per-task accuracy (mean ± std over seeds)", fontsize=10)
  fig.text(0.01, 0.01, _wrap(note, 140), fontsize=6, va="bottom")
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.savefig(path)
  plt.close(fig)
  return path


def plot_all(table, columns, runs, root: str, out: str, note: str) -> list[str]:
  made = [accuracy_vs_gmacs(table, runs, root, os.path.join(out, "accuracy_vs_gmacs.png"), note),
          per_task_bars(table, columns, os.path.join(out, "per_task.png"), note)]
  return [p for p in made if p]
