"""Image folders with list files, as distributed with the PyTorch PEFT codes. No TensorFlow on this path.

Three layouts of a task folder `<root>/<task folder>/` (the folder names of the NOAH/VPT release, e.g. `cifar`):
  * NOAH / VPT / DyT: `<split>.txt` (`train800.txt`, `val200.txt`, `train800val200.txt`, `test.txt`; `train.txt`
    for complete datasets), one `relative/path label` per line, paths relative to the task folder.
  * SynQT: `<split>.json` (`train800val200.json`, `test.json`), a JSON list of one-entry objects
    `{"<path under images/>": label}`.
  * VPT FGVC: `<split>.json` (`train.json`, `val.json`, `test.json`), one JSON object `{"relative/path.jpg": label}`,
    paths relative to `<task folder>/<Dataset.image_dir>` (VPT's `get_imagedir`: `images/` for CUB). Labels are
    taken as written (VPT remaps the sorted distinct labels of a file to 0..n-1, the identity on its dense
    0-based lists; taking them as written keeps one class numbering across splits).
A split named `a+b` with no list file of its own is the union of `a` and `b` in that order (FGVC's `train+val`).
`config.dataset.root` may also point at the task folder itself. Every listed file must exist and every label must
lie in [0, num_classes) — checked when the source is built, so a typo fails before training starts, with the list
file and line (or JSON entry). Corrupt images are found when decoded (`transforms.Load`), with the file and entry.
"""

from __future__ import annotations

import json
import os

from vit_adapt.data.datasets import Dataset
from vit_adapt.errors import UserError


def task_dir(task: Dataset, root: str) -> str:
  if not root:
    raise UserError(f"config.dataset.source='folder' needs config.dataset.root: the directory holding the task "
                    f"folder {task.folder!r} (NOAH/VPT layout) for task {task.name!r}.")
  if not os.path.isdir(root):
    raise UserError(f"image-folder root {root!r} (config.dataset.root) does not exist.")
  nested = os.path.join(root, task.folder or "")
  return nested if task.folder and os.path.isdir(nested) else root


def _parse_txt(path: str, base: str) -> list[tuple[str, int, str]]:
  entries = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      parts = line.rsplit(None, 1)  # the path may contain spaces, the label never does
      try:
        label = int(parts[1]) if len(parts) == 2 else None
      except ValueError:
        label = None
      if label is None:
        raise UserError(f"{path}:{lineno}: expected `relative/path integer_label`, got {line!r}.")
      entries.append((os.path.join(base, parts[0]), label, f"{path}:{lineno}"))
  return entries


def _check_label(label, rel: str, where: str) -> None:
  if not isinstance(label, int) or isinstance(label, bool):
    raise UserError(f"{where}: label {label!r} of {rel!r} is not an integer.")


def _load_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); expected a VPT object {{\"path\": label, ...}} "
                    "or a SynQT list of {\"path\": label}.") from None


def _vpt_entries(path: str, items: dict) -> list[tuple[str, int, str]]:
  entries = []
  for i, (rel, label) in enumerate(items.items()):
    where = f"{path} entry {i} ({rel!r})"
    _check_label(label, rel, where)
    entries.append((rel, label, where))
  return entries


def read_vpt_json(path: str) -> list[tuple[str, int, str]]:
  """A VPT FGVC list file -> [(relative path as written, label, 'file entry i (path)')], in file order."""
  items = _load_json(path)
  if not isinstance(items, dict):
    raise UserError(f"{path}: expected VPT's FGVC list, a JSON object {{\"relative/path.jpg\": label, ...}}.")
  return _vpt_entries(path, items)


def _parse_json(path: str, task: Dataset) -> list[tuple[str, int, str]]:
  """A SynQT list (paths under images/) or a VPT FGVC object (paths under the dataset's image_dir)."""
  folder = os.path.dirname(path)
  items = _load_json(path)
  if isinstance(items, dict):
    base = os.path.join(folder, task.image_dir)
    return [(os.path.join(base, rel), label, where) for rel, label, where in _vpt_entries(path, items)]
  if not isinstance(items, list):
    raise UserError(f"{path}: expected a JSON object {{\"relative/path.jpg\": label, ...}} (VPT FGVC) or a list "
                    "of one-entry objects {\"path under images/\": label} (SynQT).")
  base = os.path.join(folder, "images")
  entries = []
  for i, item in enumerate(items):
    where = f"{path} entry {i}"
    if not (isinstance(item, dict) and len(item) == 1):
      raise UserError(f"{where}: expected a one-entry object {{\"path under images/\": label}}, got {item!r}.")
    (rel, label), = item.items()
    _check_label(label, rel, where)
    entries.append((os.path.join(base, rel), label, where))
  return entries


def _find_list(folder: str, split: str) -> str | None:
  for ext in (".txt", ".json"):
    path = os.path.join(folder, split + ext)
    if os.path.isfile(path):
      return path
  return None


def list_files(task: Dataset, root: str, split: str) -> list[str]:
  """The list files of `split`: `<split>.txt` (NOAH/VPT), else `<split>.json` (SynQT, VPT FGVC); a split `a+b`
  without its own file is the files of `a` then `b`."""
  folder = task_dir(task, root)
  path = _find_list(folder, split)
  if path:
    return [path]
  parts = split.split("+")
  if len(parts) > 1 and all(parts):
    paths = [_find_list(folder, p) for p in parts]
    if all(paths):
      return paths
  present = sorted(f for f in os.listdir(folder) if f.endswith((".txt", ".json")))
  wanted = f"{split}.txt (NOAH/VPT) or {split}.json (SynQT, VPT FGVC)"
  if len(parts) > 1:
    wanted += f", or the list files of {' and '.join(repr(p) for p in parts)} (their union)"
  raise UserError(f"no list file for split {split!r} of task {task.name!r} in {folder}: expected {wanted}; "
                  f"found {present or 'none'}.")


class FolderSource:
  """Random access to one split: {'image': file path, 'label', 'where': 'list file:line' or 'list file entry i'}."""

  def __init__(self, task: Dataset, split: str, root: str, num_classes: int | None = None):
    self.task, self.split = task, task.check_split(split)
    num_classes = num_classes or task.num_classes
    self.paths = list_files(task, root, split)
    self.path = " + ".join(self.paths)
    entries = []
    for path in self.paths:
      parsed = _parse_json(path, task) if path.endswith(".json") else _parse_txt(path, os.path.dirname(path))
      if not parsed:
        raise UserError(f"{path} lists no images.")
      entries.extend(parsed)
    for file, label, where in entries:
      if not 0 <= label < num_classes:
        raise UserError(f"{where}: label {label} out of range [0, {num_classes}) for task {task.name!r}.")
      if not os.path.isfile(file):
        raise UserError(f"{where}: image {file} does not exist.")
    self._entries = entries

  def __len__(self) -> int:
    return len(self._entries)

  def __getitem__(self, index: int) -> dict:
    file, label, where = self._entries[index]
    return {"image": file, "label": label, "where": where}

  def __repr__(self) -> str:
    return f"FolderSource({self.path!r}, n={len(self)})"
