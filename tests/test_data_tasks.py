"""Task registry: names, class counts, exact VTAB-1k split strings and label mappings."""

import numpy as np
import pytest

from vit_adapt.data import datasets
from vit_adapt.errors import UserError

# (task, tfds name, val200, test, classes), transcribed from google-research/task_adaptation via vtab.md.
VTAB_TABLE = [
    ("caltech101", "caltech101:3.*.*", "train[2754:2954]", "test", 102),
    ("cifar100", "cifar100:3.*.*", "train[45000:45200]", "test", 100),
    ("dtd", "dtd:3.*.*", "validation[:200]", "test", 47),
    ("oxford_flowers102", "oxford_flowers102:2.*.*", "validation[:200]", "test", 102),
    ("oxford_iiit_pet", "oxford_iiit_pet:4.*.*", "train[2944:3144]", "test", 37),
    ("svhn", "svhn_cropped:3.*.*", "train[65931:66131]", "test", 10),
    ("sun397", "sun397/tfds:4.*.*", "validation[:200]", "test", 397),
    ("patch_camelyon", "patch_camelyon:2.*.*", "validation[:200]", "test", 2),
    ("eurosat", "eurosat/rgb:2.*.*", "train[16200:16400]", "train[21600:]", 10),
    ("resisc45", "resisc45:3.*.*", "train[18900:19100]", "train[25200:]", 45),
    ("diabetic_retinopathy", "diabetic_retinopathy_detection/btgraham-300:3.*.*", "validation[:200]", "test", 5),
    ("clevr_count", "clevr:3.*.*", "train[63000:63200]", "validation", 8),
    ("clevr_dist", "clevr:3.*.*", "train[63000:63200]", "validation", 6),
    ("dmlab", "dmlab:2.0.1", "validation[:200]", "test", 6),
    ("kitti", "kitti:3.3.0", "validation[:200]", "test", 4),
    ("dsprites_loc", "dsprites:2.*.*", "train[589824:590024]", "train[663552:]", 16),
    ("dsprites_ori", "dsprites:2.*.*", "train[589824:590024]", "train[663552:]", 16),
    ("smallnorb_azi", "smallnorb:2.*.*", "test[:200]", "test[50%:]", 18),
    ("smallnorb_ele", "smallnorb:2.*.*", "test[:200]", "test[50%:]", 9),
]


def test_vtab_registry_matches_the_protocol_table():
  assert datasets.VTAB_1K == tuple(f"vtab/{row[0]}" for row in VTAB_TABLE)
  for name, tfds_name, val200, test, classes in VTAB_TABLE:
    task = datasets.get_dataset(f"vtab/{name}")
    assert task.tfds_name == tfds_name and task.num_classes == classes and task.kind == "vtab"
    assert task.tfds_split("train800") == "train[:800]"
    assert task.tfds_split("val200") == val200
    assert task.tfds_split("train800val200") == f"train[:800]+{val200}"
    assert task.tfds_split("test") == test
  assert [datasets.get_dataset(n).num_classes for n in datasets.VTAB_1K] == [
      102, 100, 47, 102, 37, 10, 397, 2, 10, 45, 5, 8, 6, 6, 4, 16, 16, 18, 9]


def test_folder_names_follow_the_noah_release():
  folders = {datasets.get_dataset(n).folder for n in datasets.VTAB_1K}
  assert folders == {"cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397",
                     "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy", "clevr_count", "clevr_dist",
                     "dmlab", "kitti", "dsprites_loc", "dsprites_ori", "smallnorb_azi", "smallnorb_ele"}


def test_channel_fixes():
  fixes = {n: datasets.get_dataset(n).channel_fix for n in datasets.VTAB_1K if datasets.get_dataset(n).channel_fix != "none"}
  assert fixes == {"vtab/dsprites_loc": "binary_tile", "vtab/dsprites_ori": "binary_tile",
                   "vtab/smallnorb_azi": "tile", "vtab/smallnorb_ele": "tile"}


def test_complete_datasets_and_demo():
  expected = {"cifar100": 100, "svhn": 10, "food101": 101, "oxford_flowers102": 102, "oxford_iiit_pet": 37,
              "dtd": 47, "stanford_cars": 196, "fgvc_aircraft": 100, "demo/digits": 10}
  for name, classes in expected.items():
    task = datasets.get_dataset(name)
    assert task.num_classes == classes and task.split_names == ("train", "test")
  assert datasets.get_dataset("food101").tfds_split("test") == "validation"
  assert datasets.get_dataset("stanford_cars").tfds_name == "cars196:2.*.*"
  assert datasets.get_dataset("dtd").tfds_split("train") == "train+validation"
  with pytest.raises(UserError, match="not available in tensorflow_datasets"):
    datasets.get_dataset("fgvc_aircraft").tfds_split("train")


def test_unknown_task_and_split_list_the_valid_ones():
  with pytest.raises(UserError) as e:
    datasets.get_dataset("vtab/cifar")
  for name in datasets.names():
    assert name in str(e.value)
  with pytest.raises(UserError, match="train800, val200, train800val200, test"):
    datasets.get_dataset("vtab/dtd").tfds_split("train")


def _label(name, **example):
  return datasets.get_dataset(name).label_fn(example)


def test_dsprites_bins():
  assert [_label("vtab/dsprites_loc", label_x_position=x) for x in (0, 1, 2, 3, 30, 31)] == [0, 0, 1, 1, 15, 15]
  ori = [_label("vtab/dsprites_ori", label_orientation=o) for o in range(40)]
  assert ori == [int(np.floor(o * 16 / 40)) for o in range(40)]
  assert ori[:6] == [0, 0, 0, 1, 1, 2] and max(ori) == 15 and sorted(set(ori)) == list(range(16))


def test_smallnorb_labels():
  assert _label("vtab/smallnorb_azi", label_azimuth=17, label_elevation=3) == 17
  assert _label("vtab/smallnorb_ele", label_azimuth=17, label_elevation=3) == 3


def _clevr(depths):
  return {"objects": {"pixel_coords": np.array([[10.0, 20.0, d] for d in depths], np.float32)}}


def test_clevr_count_and_distance():
  for n in range(3, 11):
    assert datasets.clevr_count(_clevr([9.0] * n)) == n - 3
  # thresholds [0, 8, 8.5, 9, 9.5, 10, 100]: label = largest i with threshold[i] < min depth.
  for depths, label in [([7.9, 12.0], 0), ([8.0], 0), ([8.2, 9.7], 1), ([8.7], 2), ([9.2], 3), ([9.7], 4),
                        ([10.5, 11.0], 5), ([30.0], 5)]:
    assert datasets.clevr_distance(_clevr(depths)) == label, depths


def _kitti(objects):
  types = np.array([t for t, _ in objects], np.int64)
  location = np.array([[0.0, 1.0, z] for _, z in objects], np.float32).reshape(-1, 3)
  return {"objects": {"type": types, "location": location}}


def test_kitti_closest_vehicle():
  # Types 0-2 are Car, Van, Truck; others (pedestrian = 3, ...) are ignored. Bins: <8, 8-20, 20-999, none.
  assert datasets.kitti_closest_vehicle(_kitti([(0, 5.0), (0, 30.0)])) == 0
  assert datasets.kitti_closest_vehicle(_kitti([(3, 2.0), (1, 12.0)])) == 1
  assert datasets.kitti_closest_vehicle(_kitti([(2, 50.0)])) == 2
  assert datasets.kitti_closest_vehicle(_kitti([(3, 2.0), (6, 1.0)])) == 3
  assert datasets.kitti_closest_vehicle(_kitti([])) == 3
