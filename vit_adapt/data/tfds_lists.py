"""FGVC over tfds: VPT's split lists mapped onto tfds records by file name (`config.dataset.source='tfds'`).

tfds has four of VPT's five FGVC datasets, but only their official train/test splits; VPT's `train.json`,
`val.json`, `test.json` decide which images form train, val and test. This source reads the file name of every
record of the tfds split a list is drawn from (`Dataset.tfds_split`: 'train' for VPT's train and val, 'test' for
its test; Flowers 'train+validation'), in the feature `Dataset.tfds_file_key`, and selects, for each list entry
in file order, the record whose file name has the same stem (base name without extension: tfds stores CUB and
Dogs with their archive directories, Cars as a bare '00001'). The label is the list's, as on the folder route,
so both routes give the same examples with the same labels. Every entry must match exactly one record, checked
when the source is built (errors name the list file, the entry and the tfds split).

Building the index reads every record of the tfds split once; it is kept per (dataset, split, data dir) for the
life of the process, so the training, evaluation and size queries of a run share it.
"""

from __future__ import annotations

import os

from vit_adapt.data.datasets import Dataset
from vit_adapt.data.folder_source import list_files, read_vpt_json
from vit_adapt.data.tfds_source import TfdsSource
from vit_adapt.errors import UserError

# (tfds name, tfds split, data dir, file key, records) -> {stem: record index, or -1 when several records share it}
_INDEX: dict[tuple, dict[str, int]] = {}


def stem(name) -> str:
  """'CUB_200_2011/images/001.X/Black_Footed_Albatross_0046_18.jpg' -> 'Black_Footed_Albatross_0046_18'."""
  if isinstance(name, bytes):
    name = name.decode("utf-8")
  return os.path.splitext(os.path.basename(str(name).replace("\\", "/")))[0]


def _file_index(source: TfdsSource, key: str, data_dir: str) -> dict[str, int]:
  task = source.task
  cache_key = (task.tfds_name, source.tfds_split, os.path.abspath(data_dir) if data_dir else "", key, len(source))
  if cache_key not in _INDEX:
    index: dict[str, int] = {}
    for i in range(len(source)):
      ex = source.example(i)
      if key not in ex:
        raise UserError(f"task {task.name!r}: tfds {task.tfds_name} records have no feature {key!r} (features: "
                        f"{', '.join(sorted(ex))}); prepare the version the task names "
                        f"(python -m vit_adapt.data.prepare --task={task.name}) or use config.dataset.source='folder'.")
      s = stem(ex[key])
      index[s] = -1 if s in index else i
    _INDEX[cache_key] = index
  return _INDEX[cache_key]


def clear_cache() -> None:
  _INDEX.clear()


def _lists(task: Dataset, lists_dir: str, split: str) -> list[str]:
  if not lists_dir:
    raise UserError(f"config.dataset.source='tfds' for task {task.name!r} needs config.dataset.split_lists: the "
                    f"folder holding VPT's train.json, val.json and test.json for it (its {task.folder}/ folder, or "
                    "the folder above it; the images are not needed). Or use config.dataset.source='folder' with "
                    "config.dataset.root.")
  if not os.path.isdir(lists_dir):
    raise UserError(f"split-list folder {lists_dir!r} (config.dataset.split_lists) does not exist.")
  paths = list_files(task, lists_dir, split)
  for path in paths:
    if not path.endswith(".json"):
      raise UserError(f"{path}: task {task.name!r} over tfds reads VPT's JSON lists ({split}.json); remove or "
                      "rename this file, or point config.dataset.split_lists at VPT's release.")
  return paths


class TfdsListSource:
  """Random access to one FGVC split over tfds: {'image': encoded bytes, 'label': the list's, 'where'}."""

  def __init__(self, task: Dataset, split: str, data_dir: str | None, lists_dir: str, num_classes: int):
    self.task, self.split = task, task.check_split(split)
    self.paths = _lists(task, lists_dir, split)
    entries = []
    for path in self.paths:
      parsed = read_vpt_json(path)
      if not parsed:
        raise UserError(f"{path} lists no images.")
      entries.extend(parsed)
    self._tfds = TfdsSource(task, split, data_dir)
    index = _file_index(self._tfds, task.tfds_file_key, data_dir or "")
    where_tfds = f"tfds {task.tfds_name} split {self._tfds.tfds_split!r} ({len(self._tfds)} records)"
    records, missing = [], []
    for rel, label, where in entries:
      if not 0 <= label < num_classes:
        raise UserError(f"{where}: label {label} out of range [0, {num_classes}) for task {task.name!r}.")
      i = index.get(stem(rel))
      if i is None:
        missing.append(where)
      elif i < 0:
        raise UserError(f"{where}: several records of {where_tfds} have the file name {stem(rel)!r} (feature "
                        f"{task.tfds_file_key!r}), so the entry is ambiguous; use config.dataset.source='folder'.")
      else:
        records.append((i, label, where))
    if missing:
      raise UserError(
          f"{len(missing)} of {len(entries)} entries of {' + '.join(self.paths)} have no record of the same file "
          f"name in {where_tfds} (feature {task.tfds_file_key!r}), e.g. {'; '.join(missing[:3])}. Check that "
          f"config.dataset.split_lists holds VPT's lists for {task.name} (train/val come from the official train "
          "set, test from the official test set) and that the tfds dataset is complete; or use "
          "config.dataset.source='folder'.")
    self._records = records

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    i, label, where = self._records[index]
    ex = self._tfds.example(i)
    return {"image": ex[self.task.image_key], "label": label, "where": f"{where} = {self.task.tfds_name} split "
            f"{self._tfds.tfds_split} record {i}"}

  def __repr__(self) -> str:
    return f"TfdsListSource({self.task.tfds_name!r}, {' + '.join(self.paths)!r}, n={len(self)})"
