"""Dataset registry: every dataset vit_adapt can train on, by name (the "tasks" of VTAB and of `--tasks`).

Four kinds:
  * `vtab/<task>`: the 19 VTAB-1k tasks. Split strings, label mappings and class counts follow
    google-research/task_adaptation (see docs/data.md); `train800`, `val200`, `train800val200` and `test`.
  * complete datasets (`cifar10`, `cifar100`, `svhn`, `food101`, `oxford_flowers102`, `oxford_iiit_pet`, `dtd`,
    `stanford_cars`, `fgvc_aircraft`): full training sets, splits `train` and `test`.
  * `fgvc/<name>`: the five FGVC datasets of VPT (CUB-200-2011, NABirds, Oxford Flowers, Stanford Dogs, Stanford
    Cars) with VPT's split files: `train`, `val`, `train+val` (their union: the final training set), `test`.
    VPT's JSON lists decide membership: over VPT's image folders (source 'folder', the default), or, for the four
    that tfds has, over tfds records matched to the list entries by file name (source 'tfds' +
    `config.dataset.split_lists`; `data/tfds_lists.py`).
  * `demo/digits`: scikit-learn's handwritten digits, embedded (no download), splits `train` and `test`.
  * video datasets (task `video`, `vit_adapt.data.video`): `k400` (Kinetics-400 lists, splits `train`, `val`),
    `ssv2` (Something-Something-v2's JSON release, splits `train`, `validation`) over folders of videos
    (`layout` names the folder layout), and the embedded `demo/moving_digits` clips (`train`, `test`).

A dataset also says which `config.dataset` fields its protocol sets (`config_defaults`, applied by
`config_lib.make_config` before a config file's recipe): the split pair for complete and FGVC datasets, and
FGVC's folder source, augmentation and ImageNet normalisation (VPT's recipe, whatever the method). A key
`block.field` sets a field of another config block: the video datasets set their sampling, augmentation and test
views in `config.video` (the official protocols, whatever the method).

A dataset knows its learning task (`vit_adapt.tasks`: classification for all of these), its VTAB group, and
where its data lives for each source: a tfds name with version (None when tfds 4.9.10 has no builder,
e.g. FGVC-Aircraft) and the folder name in the NOAH/VPT image-folder release. Label functions read the numpy
example dict that `tfds.data_source` returns; they are plain Python so the same registry serves every source.
This module imports neither TensorFlow nor tfds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from vit_adapt.errors import UserError

Example = Mapping[str, Any]

# The papers' split names. VTAB-1k tasks define the first four; complete datasets and the demo `train`/`test`.
VTAB_SPLITS = ("train800", "val200", "train800val200", "test")
FULL_SPLITS = ("train", "test")
# FGVC (VPT's split files): tune on train -> val, then train on `train+val` (the union, in file order) -> test.
FGVC_SPLITS = ("train", "val", "train+val", "test")

# Channel fixes applied right after decoding (before resizing), by name.
CHANNEL_FIXES = ("none", "tile", "binary_tile")


def _read(key: str) -> Callable[[Example], int]:
  def label_fn(ex: Example) -> int:
    return int(ex[key])
  label_fn.__name__ = f"read_{key}"
  return label_fn


def _bin(key: str, n_raw: int, n_bins: int) -> Callable[[Example], int]:
  """floor(raw * n_bins / n_raw): dSprites x position (32 -> 16) and orientation (40 -> 16), as VTAB does."""
  def label_fn(ex: Example) -> int:
    return int(ex[key]) * n_bins // n_raw
  label_fn.__name__ = f"bin_{key}_{n_raw}_to_{n_bins}"
  return label_fn


def _threshold_bin(value: float, thresholds: tuple[float, ...]) -> int:
  """The largest i with thresholds[i] < value (VTAB's `reduce_max(where(thrs - value < 0))`); -1 if none."""
  below = np.nonzero(np.asarray(thresholds) < value)[0]
  return int(below[-1]) if below.size else -1


def clevr_count(ex: Example) -> int:
  """Number of objects - 3 (scenes hold 3..10 objects -> 0..7)."""
  return len(ex["objects"]["pixel_coords"]) - 3


_CLEVR_DIST_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)


def clevr_distance(ex: Example) -> int:
  """Depth bin of the closest object: min over objects of pixel_coords[:, 2]."""
  coords = np.asarray(ex["objects"]["pixel_coords"], np.float32).reshape(-1, 3)
  dist = coords[:, 2].min() if len(coords) else np.inf
  return _threshold_bin(dist, _CLEVR_DIST_THRESHOLDS)


_KITTI_DIST_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)


def kitti_closest_vehicle(ex: Example) -> int:
  """Distance bin of the closest Car/Van/Truck (object type < 3); 1000 m when there is none."""
  types = np.asarray(ex["objects"]["type"]).reshape(-1)
  location = np.asarray(ex["objects"]["location"], np.float32).reshape(-1, 3)
  depths = location[types < 3, 2]
  dist = depths.min() if depths.size else 1000.0
  return _threshold_bin(dist, _KITTI_DIST_THRESHOLDS)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset + protocol. `splits` maps our split names to tfds split strings (None when not in tfds)."""

  name: str
  kind: str                                  # 'vtab' | 'complete' | 'fgvc' | 'demo'
  num_classes: int
  tfds_name: str | None                      # 'name[/config]:version', None if tfds has no builder
  splits: tuple[tuple[str, str | None], ...]  # (split name, tfds split string)
  label_fn: Callable[[Example], int] = _read("label")
  channel_fix: str = "none"                  # one of CHANNEL_FIXES
  folder: str | None = None                  # task folder in the NOAH/VPT (and SynQT) image-folder release
  image_dir: str = ""                        # VPT JSON lists: paths are relative to <folder>/<image_dir>
  image_key: str = "image"
  default_augment: str = "none"              # what the papers train with (config.dataset.augment)
  note: str = ""                             # manual download / availability remarks shown by `prepare`
  group: str = ""                            # VTAB-1k group: 'natural' | 'specialized' | 'structured'
  task: str = "classification"               # what is learned from it (a `vit_adapt.tasks` name)
  layout: str = ""                           # video datasets: the folder layout (`vit_adapt.data.video.layouts`)
  # FGVC over tfds: the feature holding each record's file name. Set, the tfds source selects and labels records
  # by VPT's list files (`config.dataset.split_lists`), and `splits` name the tfds split each list is drawn from.
  tfds_file_key: str = ""
  # config.dataset fields this dataset's protocol sets in `config_lib.make_config` ((key, value) pairs; the
  # schema's defaults are VTAB-1k's, so VTAB tasks set none). Config files and overrides still win.
  config_defaults: tuple[tuple[str, Any], ...] = ()

  @property
  def split_names(self) -> tuple[str, ...]:
    return tuple(s for s, _ in self.splits)

  def tfds_split(self, split: str) -> str:
    """Our split name -> the tfds split string, e.g. 'val200' -> 'train[2754:2954]' (FGVC: the tfds split VPT's
    list for `split` selects from, e.g. 'val' -> 'train')."""
    table = dict(self.splits)
    if split not in table:
      raise UserError(f"task {self.name!r} has no split {split!r}; valid splits: {', '.join(self.split_names)} "
                      "(config.dataset.split / config.dataset.eval_split).")
    if table[split] is None or self.tfds_name is None:
      raise UserError(f"task {self.name!r} is not available in tensorflow_datasets 4.9.10 with its protocol's "
                      "splits; use the image-folder source (config.dataset.source='folder', "
                      f"config.dataset.root=...). {self.note}".rstrip())
    return table[split]

  def check_split(self, split: str) -> str:
    if split not in self.split_names:
      raise UserError(f"task {self.name!r} has no split {split!r}; valid splits: {', '.join(self.split_names)} "
                      "(config.dataset.split / config.dataset.eval_split).")
    return split


def _vtab(group: str, task: str, tfds_name: str, *, val200: str, test: str, num_classes: int,
          train: str = "train", folder: str | None = None, **kw) -> Dataset:
  train800 = f"{train}[:800]"
  splits = (("train800", train800), ("val200", val200), ("train800val200", f"{train800}+{val200}"),
            ("test", test))
  return Dataset(name=f"vtab/{task}", kind="vtab", num_classes=num_classes, tfds_name=tfds_name, splits=splits,
                 folder=folder or task, group=group, **kw)


_MANUAL = ("needs a manual download into <data_dir>/downloads/manual/; `python -m vit_adapt.data.prepare "
           "--task={} --data_dir=DIR` prints what to download and where to put it.")

_VTAB = [
    # Natural
    _vtab("natural", "caltech101", "caltech101:3.*.*", val200="train[2754:2954]", test="test", num_classes=102),
    _vtab("natural", "cifar100", "cifar100:3.*.*", val200="train[45000:45200]", test="test", num_classes=100,
          folder="cifar"),
    _vtab("natural", "dtd", "dtd:3.*.*", val200="validation[:200]", test="test", num_classes=47),
    _vtab("natural", "oxford_flowers102", "oxford_flowers102:2.*.*", val200="validation[:200]", test="test",
          num_classes=102),
    # VTAB pins 3.*.*; tfds 4.9.10 only has 4.0.0 (same examples and sizes).
    _vtab("natural", "oxford_iiit_pet", "oxford_iiit_pet:4.*.*", val200="train[2944:3144]", test="test", num_classes=37),
    _vtab("natural", "svhn", "svhn_cropped:3.*.*", val200="train[65931:66131]", test="test", num_classes=10),
    _vtab("natural", "sun397", "sun397/tfds:4.*.*", val200="validation[:200]", test="test", num_classes=397),
    # Specialized
    _vtab("specialized", "patch_camelyon", "patch_camelyon:2.*.*", val200="validation[:200]", test="test", num_classes=2),
    _vtab("specialized", "eurosat", "eurosat/rgb:2.*.*", val200="train[16200:16400]", test="train[21600:]", num_classes=10),
    _vtab("specialized", "resisc45", "resisc45:3.*.*", val200="train[18900:19100]", test="train[25200:]", num_classes=45,
          note=_MANUAL.format("vtab/resisc45")),
    _vtab("specialized", "diabetic_retinopathy", "diabetic_retinopathy_detection/btgraham-300:3.*.*", val200="validation[:200]",
          test="test", num_classes=5,
          note=_MANUAL.format("vtab/diabetic_retinopathy")),
    # Structured
    _vtab("structured", "clevr_count", "clevr:3.*.*", val200="train[63000:63200]", test="validation", num_classes=8,
          label_fn=clevr_count),
    _vtab("structured", "clevr_dist", "clevr:3.*.*", val200="train[63000:63200]", test="validation", num_classes=6,
          label_fn=clevr_distance),
    _vtab("structured", "dmlab", "dmlab:2.0.1", val200="validation[:200]", test="test", num_classes=6),
    # VTAB pins 3.1.0; tfds 4.9.10 can only generate the default 3.3.0 (same splits and sizes).
    _vtab("structured", "kitti", "kitti:3.3.0", val200="validation[:200]", test="test", num_classes=4,
          label_fn=kitti_closest_vehicle),
    _vtab("structured", "dsprites_loc", "dsprites:2.*.*", val200="train[589824:590024]", test="train[663552:]",
          num_classes=16, label_fn=_bin("label_x_position", 32, 16), channel_fix="binary_tile"),
    _vtab("structured", "dsprites_ori", "dsprites:2.*.*", val200="train[589824:590024]", test="train[663552:]",
          num_classes=16, label_fn=_bin("label_orientation", 40, 16), channel_fix="binary_tile"),
    _vtab("structured", "smallnorb_azi", "smallnorb:2.*.*", val200="test[:200]", test="test[50%:]", num_classes=18,
          label_fn=_read("label_azimuth"), channel_fix="tile"),
    _vtab("structured", "smallnorb_ele", "smallnorb:2.*.*", val200="test[:200]", test="test[50%:]", num_classes=9,
          label_fn=_read("label_elevation"), channel_fix="tile"),
]


def _complete(name: str, tfds_name: str | None, num_classes: int, *, train: str | None = "train",
              test: str | None = "test", **kw) -> Dataset:
  return Dataset(name=name, kind="complete", num_classes=num_classes, tfds_name=tfds_name,
              splits=(("train", train), ("test", test)), folder=name, default_augment="inception_crop",
              # Only the split pair: the augmentation of a complete-dataset recipe is the method's (e.g. the
              # `complete` switch of configs/dyt_vtab.py); `default_augment` records what the papers use.
              config_defaults=(("split", "train"), ("eval_split", "test")), **kw)


_COMPLETE = [
    _complete("cifar10", "cifar10:3.*.*", 10),
    _complete("cifar100", "cifar100:3.*.*", 100),
    _complete("svhn", "svhn_cropped:3.*.*", 10),
    # tfds calls Food-101's official test set `validation`.
    _complete("food101", "food101:2.*.*", 101, test="validation"),
    # Flowers and DTD: train on the official train+val split, as the full-dataset protocols do.
    _complete("oxford_flowers102", "oxford_flowers102:2.*.*", 102, train="train+validation"),
    _complete("oxford_iiit_pet", "oxford_iiit_pet:4.*.*", 37),
    _complete("dtd", "dtd:3.*.*", 47, train="train+validation"),
    _complete("stanford_cars", "cars196:2.*.*", 196,
              note="tfds `cars196`: " + _MANUAL.format("stanford_cars")),
    # tensorflow_datasets 4.9.10 has no FGVC-Aircraft builder: image-folder source only (train.txt / test.txt).
    _complete("fgvc_aircraft", None, 100, train=None, test=None,
              note="not in tensorflow_datasets 4.9.10: use config.dataset.source='folder' with "
              "<root>/fgvc_aircraft/{train,test}.txt (lines `relative/path label`, 100 variant classes)."),
]

_FGVC_NOTE = ("VPT's FGVC release: <root>/{folder}/ with train.json, val.json, test.json (JSON objects "
              "relative/path -> label, paths relative to {where}); config.dataset.source='folder' (the default) and "
              "config.dataset.root (the folder holding {folder}/, or that folder itself).")
_FGVC_TFDS_NOTE = (" Or tfds {tfds} (`python -m vit_adapt.data.prepare --task=fgvc/{name}`) with VPT's lists: "
                   "config.dataset.source='tfds', config.dataset.split_lists=<the folder holding VPT's json files>.")


def _fgvc(name: str, num_classes: int, folder: str, image_dir: str = "", *, tfds: str | None = None,
          file_key: str = "", train_pool: str = "train", test_pool: str = "test") -> Dataset:
  """An FGVC dataset in VPT's layout. With `tfds`, also over that tfds builder: VPT's train/val lists are drawn
  from the tfds split `train_pool` (the official train set), its test list from `test_pool`, records matched by
  the file name in feature `file_key` (see data/tfds_lists.py)."""
  where = f"{folder}/{image_dir}/" if image_dir else f"{folder}/"
  note = _FGVC_NOTE.format(folder=folder, where=where)
  if tfds:
    note += _FGVC_TFDS_NOTE.format(tfds=tfds.split(":")[0], name=name)
  pools = {"train": train_pool, "val": train_pool, "train+val": train_pool, "test": test_pool}
  return Dataset(name=f"fgvc/{name}", kind="fgvc", num_classes=num_classes, tfds_name=tfds,
                 splits=tuple((s, pools[s] if tfds else None) for s in FGVC_SPLITS), folder=folder,
                 image_dir=image_dir, tfds_file_key=file_key, default_augment="vpt_crop", note=note,
                 config_defaults=(("source", "folder"), ("split", "train+val"), ("eval_split", "test"),
                                  ("augment", "vpt_crop"), ("normalization", "imagenet")))


# Folder names and image directories of VPT's release (its DATA.DATAPATH folders and `get_imagedir`): CUB and
# NABirds keep images under images/, Stanford Dogs under Images/, Flowers and Cars at the folder's top level.
# tfds builders (4.9.10) and the feature naming each record's file: CUB and Dogs keep the archive path
# ('image/filename'), Flowers 'image_00001.jpg' ('file_name'), Cars the stem '00001' ('id', from version 2.1.0 on;
# Cars' train and test files share names, hence one tfds split per list). tfds has no NABirds.
_FGVC = [
    _fgvc("cub", 200, "CUB_200_2011", "images", tfds="caltech_birds2011:0.2.*", file_key="image/filename"),
    _fgvc("nabirds", 555, "nabirds", "images"),
    # VPT's Flowers lists are the official train / val / test sets; tfds calls them train / validation / test.
    _fgvc("oxford_flowers", 102, "OxfordFlower", tfds="oxford_flowers102:2.*.*", file_key="file_name",
          train_pool="train+validation"),
    _fgvc("stanford_dogs", 120, "Stanford-dogs", "Images", tfds="stanford_dogs:0.2.*", file_key="image/filename"),
    _fgvc("stanford_cars", 196, "Stanford-cars", tfds="cars196:2.1.*", file_key="id"),
]
FGVC = tuple(t.name for t in _FGVC)

_DEMO = [
    Dataset(name="demo/digits", kind="demo", num_classes=10, tfds_name=None, splits=(("train", None), ("test", None)),
         folder=None, note="scikit-learn's load_digits (1797 8x8 images), embedded; no download.",
         config_defaults=(("split", "train"), ("eval_split", "test"))),
]

_VIDEO_NOTE = ("videos in folders, no tfds builder: set config.dataset.root to the folder holding {what} "
               "(see docs/video.md).")
# The official sampling, augmentation and test views of each video dataset (DyT's main_video.py; see
# docs/video.md). Inception normalisation ([-1, 1]) is the schema default, as for the Google checkpoints.
_VIDEO = [
    Dataset(name="k400", kind="video", num_classes=400, tfds_name=None, splits=(("train", None), ("val", None)),
            task="video", layout="k400_list",
            note=_VIDEO_NOTE.format(what="train.txt / val.txt (`relative/path.mp4 label`) or the Kinetics CSVs "
                                    "with train/ and val/ video folders"),
            config_defaults=(("source", "folder"), ("split", "train"), ("eval_split", "val"),
                             ("video.sampling", "dense"), ("video.stride", 16), ("video.augment", "scale_jitter"),
                             ("video.flip", True), ("video.temporal_views", 3), ("video.spatial_views", 1))),
    Dataset(name="ssv2", kind="video", num_classes=174, tfds_name=None,
            splits=(("train", None), ("validation", None)), task="video", layout="ssv2_json",
            note=_VIDEO_NOTE.format(what="something-something-v2-{train,validation,labels}.json and the webm "
                                    "videos"),
            config_defaults=(("source", "folder"), ("split", "train"), ("eval_split", "validation"),
                             ("video.sampling", "segment"), ("video.augment", "randaug_rrc"), ("video.flip", False),
                             ("video.randaugment", "rand-m7-n4-mstd0.5-inc1"), ("video.temporal_views", 1),
                             ("video.spatial_views", 3))),
    Dataset(name="demo/moving_digits", kind="video", num_classes=40, tfds_name=None,
            splits=(("train", None), ("test", None)), task="video", layout="moving_digits",
            note="scikit-learn's digits sliding across a canvas (class = digit x axis of motion), embedded; no "
            "download.",
            config_defaults=(("source", "demo"), ("split", "train"), ("eval_split", "test"),
                             ("video.sampling", "dense"), ("video.stride", 2), ("video.augment", "scale_jitter"),
                             ("video.flip", False), ("video.temporal_views", 2), ("video.spatial_views", 1))),
]


def reduce_zero_label(ex: Example) -> np.ndarray:
  """ADE20K's label maps: 0 ('other') -> 255 (ignored), k -> k - 1 (mmseg's reduce_zero_label)."""
  label = np.asarray(ex["label"])
  return np.where(label == 0, 255, label.astype(np.int32) - 1).astype(np.uint8)


# COCO-Stuff-164k's stuffthingmaps hold COCO ids - 1 (0..181, 255 unlabeled); 11 of those ids are unused, the
# other 171 are the classes in id order (mmseg's labelTrainIds).
_COCO_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
_COCO_TABLE = np.full(256, 255, np.uint8)
_COCO_TABLE[[i for i in range(182) if i not in _COCO_UNUSED]] = np.arange(171)


def coco_stuff_train_ids(ex: Example) -> np.ndarray:
  return _COCO_TABLE[np.asarray(ex["label"])]


def _identity_map(ex: Example) -> np.ndarray:
  return np.asarray(ex["label"])


# Semantic segmentation (task 'segmentation'): `label_fn` maps a decoded label map to class ids (255 = ignored).
_SEGMENTATION = [
    # tfds 4.9.10's `scene_parse150` is not usable here: its `annotation` feature is built from ChallengeData2017's
    # annotations_instance/ (R = category of the 100-class instance challenge, G = instance id), not from the
    # 150-class semantic maps of ADEChallengeData2016 that the papers evaluate on. Folder layout only.
    Dataset(name="ade20k", kind="segmentation", num_classes=150, tfds_name=None,
            splits=(("train", None), ("validation", None)), folder="ADEChallengeData2016",
            label_fn=reduce_zero_label, task="segmentation",
            note="ADE20K SceneParsing, folder layout only (tfds `scene_parse150` carries instance maps, not the "
            "150-class semantic labels): <root>/ADEChallengeData2016/{images,annotations}/{training,validation} "
            "from http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip "
            "(config.dataset.source='folder').",
            config_defaults=(("source", "folder"), ("split", "train"), ("eval_split", "validation"))),
    Dataset(name="coco_stuff", kind="segmentation", num_classes=171, tfds_name=None,
            splits=(("train", None), ("validation", None)), folder="coco_stuff164k", label_fn=coco_stuff_train_ids,
            task="segmentation",
            note="COCO-Stuff-164k, folder layout only: <root>/coco_stuff164k/images/{train2017,val2017}/*.jpg and "
            "<root>/coco_stuff164k/stuffthingmaps/{train2017,val2017}/*.png (config.dataset.source='folder').",
            config_defaults=(("source", "folder"), ("split", "train"), ("eval_split", "validation"))),
    Dataset(name="demo/digit_scenes", kind="demo", num_classes=5, tfds_name=None,
            splits=(("train", None), ("test", None)), label_fn=_identity_map, task="segmentation",
            note="digits of scikit-learn pasted on textured 48 x 48 canvases with their masks, in 4 colour-coded "
            "object classes + background, embedded.",
            config_defaults=(("split", "train"), ("eval_split", "test"))),
]

_REGISTRY: dict[str, Dataset] = {t.name: t for t in (*_VTAB, *_COMPLETE, *_FGVC, *_DEMO, *_VIDEO, *_SEGMENTATION)}

# The 19 VTAB-1k tasks in the canonical order of the papers' tables, and their groups in that order.
VTAB_1K = tuple(t.name for t in _VTAB)
VTAB_GROUPS: dict[str, tuple[str, ...]] = {
    g: tuple(t.name for t in _VTAB if t.group == g) for g in dict.fromkeys(t.group for t in _VTAB)}


def register(task: Dataset) -> Dataset:
  """Adds a task (e.g. a custom tfds dataset or image folder) so configs can name it; names must be new."""
  if task.name in _REGISTRY:
    raise UserError(f"task {task.name!r} is already registered.")
  if task.channel_fix not in CHANNEL_FIXES:
    raise UserError(f"task {task.name!r}: channel_fix {task.channel_fix!r} not in {CHANNEL_FIXES}.")
  _REGISTRY[task.name] = task
  return task


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def get_dataset(name: str) -> Dataset:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise UserError(f"unknown task {name!r} (config.dataset.name / task=...). Valid tasks: "
                    f"{', '.join(_REGISTRY)}.") from None
