"""What a sweep runs: the grid syntax, the task list and the expansion into named runs.

A sweep is (config files) x (tasks) x (grid points). Every run gets a readable directory
`<workdir>/<task>/<config label>/<k=v,...>` and a command line for `python -m vit_adapt.main` that selects the
task through the config argument (`configs/x.py:task=vtab/dtd`, so the config file derives the class count and
any task-specific recipe) and sets the grid point with `--config.<key>=<value>` overrides.

Grid syntax (`--grid`): `key=[v1,v2,...]` items separated by `;` (or by a `,` that is outside brackets and
quotes and followed by `key=`), e.g. `optim.lr=[1e-3,3e-3];seed=[0,1,2]` or `seed=[0,1],optim.lr=[1e-3,3e-3]`.
Values are Python literals (numbers, quoted strings, tuples); bare words are strings (`method.mode=[a,b]`);
`key=v` is a one-value axis. The product of all axes is taken in the order written.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import os
import re
from typing import Any, Sequence

from absl import flags
from ml_collections import config_flags

from vit_adapt.data import datasets
from vit_adapt.errors import UserError

# The VTAB-1k tasks and groups are the dataset registry's (one source of truth); full `vtab/<task>` names.
VTAB_GROUPS: dict[str, tuple[str, ...]] = datasets.VTAB_GROUPS
VTAB_TASKS: tuple[str, ...] = datasets.VTAB_1K
TASK_GROUP: dict[str, str] = {t: g for g, ts in VTAB_GROUPS.items() for t in ts}


def parse_tasks(spec: str) -> list[str]:
  """'all' | 'natural' | 'specialized' | 'structured' | comma-separated task names -> ordered unique names."""
  out: list[str] = []
  for item in filter(None, (s.strip() for s in (spec or "").split(","))):
    if item == "all":
      names = list(VTAB_TASKS)
    elif item in VTAB_GROUPS:
      names = list(VTAB_GROUPS[item])
    else:
      names = [item]
    out.extend(n for n in names if n not in out)
  return out


def _parse_value(text: str) -> Any:
  text = text.strip()
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word is a string: method.mode=[soft,hard]


def _split_top_level(text: str, sep: str) -> list[str]:
  """Splits on `sep` outside brackets and quotes (so tuple values and quoted commas survive)."""
  parts, depth, quote, cur = [], 0, None, []
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == sep and depth == 0:
      parts.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  parts.append("".join(cur))
  return parts


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_STARTS_ITEM = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_.]*\s*=")


def _split_items(spec: str) -> list[str]:
  """Items separated by ';', or by a top-level ',' that starts a new `key=` (a value's own commas stay)."""
  items = []
  for part in _split_top_level(spec, ";"):
    pieces = _split_top_level(part, ",")
    current = pieces[0]
    for piece in pieces[1:]:
      if _STARTS_ITEM.match(piece):
        items.append(current)
        current = piece
      else:
        current += "," + piece
    items.append(current)
  return items


def parse_grid(spec: str) -> list[tuple[str, list[Any]]]:
  """'optim.lr=[1e-3,3e-3];seed=[0,1]' -> [('optim.lr', [0.001, 0.003]), ('seed', [0, 1])]."""
  axes: list[tuple[str, list[Any]]] = []
  for item in filter(None, (s.strip() for s in _split_items(spec or ""))):
    key, sep, values = item.partition("=")
    key, values = key.strip(), values.strip()
    if not sep or not _KEY.fullmatch(key) or not values:
      raise UserError(f"--grid item {item!r} is not KEY=[v1,v2,...] (e.g. --grid='optim.lr=[1e-3,3e-3];seed=[0,1]').")
    if key in (k for k, _ in axes):
      raise UserError(f"--grid names {key!r} twice; give all its values in one list.")
    if values.startswith("[") and values.endswith("]"):
      vals = [_parse_value(v) for v in _split_top_level(values[1:-1], ",") if v.strip()]
    else:
      vals = [_parse_value(values)]
    if not vals:
      raise UserError(f"--grid axis {key!r} has no values.")
    axes.append((key, vals))
  return axes


def parse_overrides(spec: str) -> dict[str, Any]:
  """'dataset.source=folder;dataset.root=/data/vtab' -> fixed overrides applied to every run (not in names)."""
  out = {}
  for key, vals in parse_grid(spec):
    if len(vals) != 1:
      raise UserError(f"--overrides {key!r} has {len(vals)} values; use --grid to sweep over values.")
    out[key] = vals[0]
  return out


def format_value(v: Any) -> str:
  """A value as the text `--config.key=` parses back to it (absl parses by the field's type)."""
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, (list, tuple)):
    return repr(tuple(v))
  return str(v)


def _label_value(v: Any) -> str:
  s = format_value(v)
  return re.sub(r"[^A-Za-z0-9_.+\-]", "_", s)  # keep directory names portable


def load_config(config_arg: str, overrides: dict):
  """The config `python -m vit_adapt.main --config=<config_arg> --config.k=v ...` would build (same parser)."""
  argv = (["sweep", f"--config={config_arg}"]
          + [f"--config.{k}={format_value(v)}" for k, v in overrides.items()])
  fv = flags.FlagValues()
  # `sys_argv` tells the config flag which `--config.*` override flags to define before parsing.
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
  fv(argv)
  return fv["config"].value


@dataclasses.dataclass
class ConfigRef:
  """One `--config=path[:arg]` of the sweep, with the task argument removed (the sweep sets the task)."""
  path: str
  arg: str = ""
  default_task: str | None = None  # the config's own dataset.name, when neither --tasks nor the arg names one

  @classmethod
  def parse(cls, text: str) -> "ConfigRef":
    path, _, arg = text.partition(":")
    if not path.endswith(".py"):
      raise UserError(f"--config={text!r}: expected a config file, e.g. configs/dyt_vtab.py[:demo].")
    if not os.path.isfile(path):
      raise UserError(f"--config={text!r}: file {path!r} not found (run from the repository root or give "
                      "an absolute path).")
    return cls(path=path, arg=arg)

  def task_in_arg(self) -> str | None:
    for part in self.arg.split(","):
      k, _, v = part.partition("=")
      if k.strip() == "task":
        return v.strip()
    return None

  def with_task(self, task: str | None) -> str:
    """`path:arg` with `task=<task>` replacing any task in the user's argument."""
    parts = [p for p in self.arg.split(",") if p.strip() and p.partition("=")[0].strip() != "task"]
    if task:
      parts.insert(0, f"task={task}")
    return self.path + (":" + ",".join(parts) if parts else "")

  @property
  def label(self) -> str:
    stem = os.path.splitext(os.path.basename(self.path))[0]
    rest = [p.strip() for p in self.arg.split(",") if p.strip() and p.partition("=")[0].strip() != "task"]
    return stem + ("-" + _label_value("-".join(rest)) if rest else "")


@dataclasses.dataclass
class Run:
  """One training run of the sweep."""
  name: str           # '<task>/<config label>/<grid label>', also its directory under the sweep workdir
  task: str
  config: str         # 'path:arg' passed to --config
  config_label: str
  point: dict         # the grid point {key: value}
  overrides: dict     # grid point + fixed overrides, as passed on the command line

  def load_config(self):
    return load_config(self.config, self.overrides)

  def command(self, python: str, workdir: str) -> list[str]:
    cmd = [python, "-m", "vit_adapt.main", f"--config={self.config}", f"--workdir={workdir}"]
    cmd += [f"--config.{k}={format_value(v)}" for k, v in self.overrides.items()]
    return cmd


def expand(configs: Sequence[ConfigRef], tasks: Sequence[str], axes: Sequence[tuple[str, list]],
           overrides: dict | None = None) -> list[Run]:
  """(configs) x (tasks) x (grid product) -> runs, in that nesting order (a task's runs stay together)."""
  overrides = dict(overrides or {})
  for key, _ in axes:
    if key in overrides:
      raise UserError(f"{key!r} is both in --grid and in --overrides; keep it in one of them.")
  labels = [c.label for c in configs]
  if len(set(labels)) != len(labels):
    raise UserError(f"two --config values have the same label {labels}; their runs would share directories.")
  runs = []
  points = [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]
  for cfg in configs:
    own = not tasks and not cfg.task_in_arg()  # the config file's own task: its argument stays as written
    cfg_tasks = list(tasks) or [cfg.task_in_arg() or cfg.default_task]
    for task in cfg_tasks:
      for point in points:
        grid_label = ",".join(f"{k}={_label_value(v)}" for k, v in point.items()) or "default"
        task_label = task or "default_task"
        config = cfg.path + (":" + cfg.arg if cfg.arg else "") if own else cfg.with_task(task)
        runs.append(Run(name=f"{task_label}/{cfg.label}/{grid_label}", task=task_label,
                        config=config, config_label=cfg.label, point=point,
                        overrides={**overrides, **point}))
  names = [r.name for r in runs]
  dup = {n for n in names if names.count(n) > 1}
  if dup:
    raise UserError(f"grid values collide after turning them into directory names: {sorted(dup)[:3]}.")
  return runs
