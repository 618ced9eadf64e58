"""Image folders with list files, as distributed with the PyTorch PEFT codes. No TensorFlow on this path.

Two layouts of a task folder `<root>/<task folder>/` (the folder names of the NOAH/VPT release, e.g. `cifar`):
  * NOAH / VPT / DyT: `<split>.txt` (`train800.txt`, `val200.txt`, `train800val200.txt`, `test.txt`; `train.txt`
    for complete datasets), one `relative/path label` per line, paths relative to the task folder.
  * SynQT: `<split>.json` (`train800val200.json`, `test.json`), a JSON list of one-entry objects
    `{"<path under images/>": label}`.
`config.dataset.root` may also point at the task folder itself. Every listed file must exist and every label must
lie in [0, num_classes) — checked when the source is built, so a typo fails before training starts, with the list
file and line. Corrupt images are found when decoded (`transforms.Load`), with the file and list line.
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


def _parse_json(path: str, base: str) -> list[tuple[str, int, str]]:
  try:
    with open(path, encoding="utf-8") as f:
      items = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); expected a list of {{\"path\": label}}.") from None
  if not isinstance(items, list):
    raise UserError(f"{path}: expected a JSON list of one-entry objects {{\"path under images/\": label}}.")
  entries = []
  for i, item in enumerate(items):
    where = f"{path} entry {i}"
    if not (isinstance(item, dict) and len(item) == 1):
      raise UserError(f"{where}: expected a one-entry object {{\"path under images/\": label}}, got {item!r}.")
    (rel, label), = item.items()
    if not isinstance(label, int) or isinstance(label, bool):
      raise UserError(f"{where}: label {label!r} of {rel!r} is not an integer.")
    entries.append((os.path.join(base, rel), label, where))
  return entries


def list_file(task: Dataset, root: str, split: str) -> str:
  """The list file of `split`: `<split>.txt` (NOAH/VPT), else `<split>.json` (SynQT)."""
  folder = task_dir(task, root)
  for ext in (".txt", ".json"):
    path = os.path.join(folder, split + ext)
    if os.path.isfile(path):
      return path
  present = sorted(f for f in os.listdir(folder) if f.endswith((".txt", ".json")))
  raise UserError(f"no list file for split {split!r} of task {task.name!r} in {folder}: expected {split}.txt "
                  f"(NOAH/VPT) or {split}.json (SynQT); found {present or 'none'}.")


class FolderSource:
  """Random access to one split: {'image': file path, 'label', 'where': 'list file:line'}."""

  def __init__(self, task: Dataset, split: str, root: str, num_classes: int | None = None):
    self.task, self.split = task, task.check_split(split)
    num_classes = num_classes or task.num_classes
    self.path = list_file(task, root, split)
    folder = os.path.dirname(self.path)
    if self.path.endswith(".json"):
      entries = _parse_json(self.path, os.path.join(folder, "images"))
    else:
      entries = _parse_txt(self.path, folder)
    if not entries:
      raise UserError(f"{self.path} lists no images.")
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
