"""The folder layouts of the video datasets users have, by name (`Dataset.layout`): what a split's videos and
labels are. Only list files are read here; videos are opened when a clip is read (`decode.py`).

  k400_list  Kinetics-style lists under config.dataset.root:
               <root>/<split>.txt      lines `relative/path.mp4 label` (the DyT / VideoMAE lists; paths relative to
                                       the root, integer labels)
               <root>/<split>.csv      the Kinetics release's CSV (`label,youtube_id,time_start,time_end,split`;
                                       the validation file may be called validate.csv): the video is
                                       <root>/<split>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4 (the CVDF
                                       mirror's names), class indices = the sorted class names of train.csv
  ssv2_json  the Something-Something-v2 release: <root>/something-something-v2-{train,validation,labels}.json and
             webm files named by id in <root>/20bn-something-something-v2/ (as unpacked), <root>/videos/ or <root>/;
             the label of a video is labels.json's index of its template with the brackets removed.

`read(layout, root, split)` -> `VideoList(items=[(path, label, where)], class_names)`; a missing or malformed file
is a UserError naming it and saying what the layout expects.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Callable

from vit_adapt.errors import UserError


@dataclasses.dataclass(frozen=True)
class VideoList:
  items: tuple[tuple[str, int, str], ...]  # (video path, label, where: list file and line / entry)
  class_names: tuple[str, ...] = ()


def _root(root: str, layout: str) -> str:
  if not root:
    raise UserError(f"config.dataset.root is empty: set it to the folder holding the {layout} layout "
                    "(see docs/video.md)")
  if not os.path.isdir(root):
    raise UserError(f"config.dataset.root={root!r} is not a directory")
  return root


_CSV_NAMES = {"val": ("val.csv", "validate.csv", "validation.csv"), "test": ("test.csv",)}


def _k400_classes(root: str, fallback: str) -> list[str]:
  train = os.path.join(root, "train.csv")
  path = train if os.path.exists(train) else fallback
  with open(path, newline="") as f:
    return sorted({row["label"] for row in csv.DictReader(f)})


def read_k400(root: str, split: str) -> VideoList:
  root = _root(root, "k400_list")
  listing = os.path.join(root, f"{split}.txt")
  if os.path.exists(listing):
    items = []
    with open(listing) as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
          raise UserError(f"{listing} line {n}: expected `relative/path.mp4 label`, got {line.strip()!r}")
        items.append((os.path.join(root, parts[0]), int(parts[1]), f"{listing} line {n}"))
    return VideoList(tuple(items))
  for name in _CSV_NAMES.get(split, (f"{split}.csv",)):
    path = os.path.join(root, name)
    if os.path.exists(path):
      break
  else:
    raise UserError(f"no list for split {split!r} in {root}: expected {split}.txt (lines `relative/path.mp4 "
                    f"label`) or the Kinetics CSV ({' / '.join(_CSV_NAMES.get(split, (f'{split}.csv',)))})")
  classes = _k400_classes(root, path)
  index = {c: i for i, c in enumerate(classes)}
  items = []
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or ())
    if missing:
      raise UserError(f"{path}: not a Kinetics CSV, columns {sorted(missing)} missing (header "
                      f"{reader.fieldnames})")
    for n, row in enumerate(reader, 2):
      if row["label"] not in index:
        raise UserError(f"{path} line {n}: class {row['label']!r} is not among the classes of train.csv")
      name = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}.mp4"
      items.append((os.path.join(root, split, name), index[row["label"]], f"{path} line {n}"))
  return VideoList(tuple(items), tuple(classes))


SSV2_PREFIX = "something-something-v2"
_SSV2_VIDEO_DIRS = ("20bn-something-something-v2", "videos", "")


def _load_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path} does not exist: the SSv2 release's JSON files must be in config.dataset.root "
                    "(see docs/video.md)") from None
  except ValueError as e:
    raise UserError(f"{path} is not valid JSON ({e})") from None


def read_ssv2(root: str, split: str) -> VideoList:
  root = _root(root, "ssv2_json")
  labels_path = os.path.join(root, f"{SSV2_PREFIX}-labels.json")
  labels = _load_json(labels_path)
  if not isinstance(labels, dict):
    raise UserError(f"{labels_path}: expected an object template -> index")
  names = [""] * len(labels)
  for template, index in labels.items():
    names[int(index)] = template
  path = os.path.join(root, f"{SSV2_PREFIX}-{split}.json")
  entries = _load_json(path)
  video_dir = next((os.path.join(root, d) for d in _SSV2_VIDEO_DIRS
                    if d and os.path.isdir(os.path.join(root, d))), root)
  items = []
  for n, entry in enumerate(entries):
    try:
      template = entry["template"].replace("[", "").replace("]", "")
      vid = str(entry["id"])
    except (KeyError, TypeError, AttributeError):
      raise UserError(f"{path} entry {n}: expected an object with 'id' and 'template'") from None
    if template not in labels:
      raise UserError(f"{path} entry {n} (id {vid}): template {template!r} is not in {labels_path}")
    items.append((os.path.join(video_dir, f"{vid}.webm"), int(labels[template]), f"{path} entry {n} (id {vid})"))
  return VideoList(tuple(items), tuple(names))


LAYOUTS: dict[str, Callable[[str, str], VideoList]] = {"k400_list": read_k400, "ssv2_json": read_ssv2}


def read(layout: str, root: str, split: str) -> VideoList:
  if layout not in LAYOUTS:
    raise UserError(f"video layout {layout!r} unknown; known: {', '.join(LAYOUTS)}")
  return LAYOUTS[layout](root, split)
