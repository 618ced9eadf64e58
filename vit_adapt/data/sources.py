"""Source registry: `config.dataset.source` -> a random-access record source for one split of the task.

Every source has `__len__` and `__getitem__(i) -> {'image': bytes | uint8 array | path, 'label': int, 'where': str}`
(`where` names the record in error messages). Sources import their backends lazily so the folder and demo paths
never import TensorFlow.
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from vit_adapt.data import datasets
from vit_adapt.errors import UserError
from vit_adapt.data.demo import DigitsSource
from vit_adapt.data.folder_source import FolderSource
from vit_adapt.data.tfds_lists import TfdsListSource
from vit_adapt.data.tfds_source import TfdsSource


def _tfds(task, split, config):
  if task.tfds_file_key:  # FGVC: VPT's lists select and label the records
    return TfdsListSource(task, split, config.dataset.get("data_dir", ""), config.dataset.get("split_lists", ""),
                          num_classes(config, task))
  return TfdsSource(task, split, config.dataset.get("data_dir", ""))


def _folder(task, split, config):
  return FolderSource(task, split, config.dataset.get("root", ""), num_classes(config, task))


def _demo(task, split, config):
  del config
  return DigitsSource(task, split)


def num_classes(config: ml_collections.ConfigDict, task: datasets.Dataset) -> int:
  """config.dataset.num_classes when set (> 0), else the task's class count."""
  n = int(config.dataset.get("num_classes", -1))
  return n if n > 0 else task.num_classes


SOURCES: dict[str, Callable] = {"tfds": _tfds, "folder": _folder, "demo": _demo}


def source_name(config: ml_collections.ConfigDict, task: datasets.Dataset) -> str:
  """The demo task has exactly one source; other tasks use config.dataset.source ('tfds' | 'folder')."""
  if task.kind == "demo":
    return "demo"
  name = config.dataset.get("source", "tfds")
  if name not in SOURCES or name == "demo":
    raise UserError(f"config.dataset.source={name!r} is not a source for task {task.name!r}; use 'tfds' or "
                    "'folder' (the 'demo' source serves only demo/digits).")
  return name


def open_source(config: ml_collections.ConfigDict, split: str):
  """-> (task, source) for `split` of config.dataset.name."""
  task = datasets.get_dataset(config.dataset.name)
  task.check_split(split)
  return task, SOURCES[source_name(config, task)](task, split, config)
