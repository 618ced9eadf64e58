"""FGVC (VPT's five fine-grained datasets) and CIFAR-10: registry records, VPT's JSON split files on generated
folders (sizes and labels exact, `train+val` = train then val), the `vpt_crop` augmentation, the config defaults
every config file gets for them, and the errors of a broken release."""

import glob
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from vit_adapt import config_lib
from vit_adapt.data import datasets, images, pipeline, transforms
from vit_adapt.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16

# (name, classes, VPT folder, image dir under it), from docs/data.md / VPT's get_imagedir.
FGVC_TABLE = [
    ("fgvc/cub", 200, "CUB_200_2011", "images"),
    ("fgvc/nabirds", 555, "nabirds", "images"),
    ("fgvc/oxford_flowers", 102, "OxfordFlower", ""),
    ("fgvc/stanford_dogs", 120, "Stanford-dogs", "Images"),
    ("fgvc/stanford_cars", 196, "Stanford-cars", ""),
]


def test_fgvc_and_cifar10_records():
  assert datasets.FGVC == tuple(row[0] for row in FGVC_TABLE)
  for name, classes, folder, image_dir in FGVC_TABLE:
    d = datasets.get_dataset(name)
    assert (d.kind, d.num_classes, d.folder, d.image_dir) == ("fgvc", classes, folder, image_dir)
    assert d.split_names == ("train", "val", "train+val", "test") and d.default_augment == "vpt_crop"
    assert dict(d.config_defaults) == {"source": "folder", "split": "train+val", "eval_split": "test",
                                       "augment": "vpt_crop", "normalization": "imagenet"}
  # tfds has four of the five (with VPT's lists: tests/test_data_fgvc_tfds.py), not NABirds.
  assert [n for n in datasets.FGVC if datasets.get_dataset(n).tfds_name is None] == ["fgvc/nabirds"]
  c10 = datasets.get_dataset("cifar10")
  assert (c10.kind, c10.num_classes, c10.tfds_name, c10.folder) == ("complete", 10, "cifar10:3.*.*", "cifar10")
  assert c10.tfds_split("train") == "train" and c10.tfds_split("test") == "test"


def _write_images(base, rels, seed=0):
  """Distinct small images (channel 0 = 10 * index, varied sizes and aspect) at base/rel, JPEG or PNG by name."""
  rng = np.random.default_rng(seed)
  for i, rel in enumerate(rels):
    h, w = 20 + (i % 4) * 5, 36 - (i % 3) * 6
    pixels = rng.integers(0, 255, (h, w, 3), np.uint8)
    pixels[..., 0] = 10 * i
    path = os.path.join(base, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def vpt_folder(root, name="fgvc/cub", n_train=5, n_val=3, n_test=4):
  """A VPT-layout dataset folder: images under <folder>/<image_dir>/, train/val/test.json objects path -> label.
  Labels are sparse in [0, num_classes) (e.g. 0, 199 for CUB) so range checks are exercised at both ends."""
  d = datasets.get_dataset(name)
  folder = os.path.join(str(root), d.folder)
  top = d.num_classes - 1
  splits = {}
  for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
    # Names with a space and both formats, in VPT's `NNN.Class/file.jpg` style.
    entries = {f"{(7 * i) % 3:03d}.Class x/{split}_{i}.{'png' if i % 2 else 'jpg'}": (0, top, 5)[(7 * i) % 3]
               for i in range(n)}
    splits[split] = entries
    _write_images(os.path.join(folder, d.image_dir), list(entries), seed=len(split))
    with open(os.path.join(folder, f"{split}.json"), "w") as f:
      json.dump(entries, f)
  return folder, splits


def _config(root, task="fgvc/cub", arg="", **dataset):
  c, _ = config_lib.make_config("linear", f"task={task}{arg}")
  c.model.image_size = SIZE
  c.train.batch_size = 4
  c.eval.batch_size = 4
  c.dataset.update(root=str(root), num_threads=2, **dataset)
  return c


def _eval_labels(config, split):
  batches = list(pipeline.eval_batches(config, split, process_index=0, process_count=1))
  return np.concatenate([b["label"][b["mask"]] for b in batches]).tolist(), batches


def test_vpt_json_splits_sizes_and_labels(tmp_path):
  folder, splits = vpt_folder(tmp_path)
  config = _config(tmp_path)
  assert config.dataset.source == "folder"  # the FGVC default: only the folder source has VPT's splits
  sizes = {s: pipeline.num_examples(config, s) for s in ("train", "val", "train+val", "test")}
  assert sizes == {"train": 5, "val": 3, "train+val": 8, "test": 4}
  for split in ("train", "val", "test"):
    assert _eval_labels(config, split)[0] == list(splits[split].values())
  labels, batches = _eval_labels(config, "train+val")
  assert labels == list(splits["train"].values()) + list(splits["val"].values())
  assert set(labels) == {0, 199, 5}
  # Channel 0 encodes the image's index in its file: train 0..4 then val 0..2 (file order, no dedup/shuffle).
  # Evaluation is resize 256/224 + centre crop (vpt_crop's pair), ImageNet statistics.
  first = images.decode(os.path.join(folder, "images", list(splits["train"])[0]))
  want = images.normalize(images.resize_center_crop(first, SIZE), "imagenet")
  np.testing.assert_allclose(batches[0]["image"][0], want, atol=1e-5)
  # root may be the dataset folder itself.
  assert pipeline.num_examples(_config(folder), "train+val") == 8


def test_image_dir_is_per_dataset(tmp_path):
  """Stanford Dogs' paths are relative to Images/, Flowers' to the folder itself (VPT's get_imagedir)."""
  vpt_folder(tmp_path, "fgvc/stanford_dogs", 2, 2, 2)
  assert os.path.isdir(tmp_path / "Stanford-dogs" / "Images")
  assert pipeline.num_examples(_config(tmp_path, "fgvc/stanford_dogs"), "train+val") == 4
  _, splits = vpt_folder(tmp_path, "fgvc/oxford_flowers", 3, 2, 2)
  assert os.path.isfile(tmp_path / "OxfordFlower" / list(splits["test"])[0])
  assert _eval_labels(_config(tmp_path, "fgvc/oxford_flowers"), "test")[0] == list(splits["test"].values())


def test_vpt_crop_training_batches(tmp_path):
  vpt_folder(tmp_path)
  config = _config(tmp_path)
  assert config.dataset.augment == "vpt_crop"
  it = pipeline.train_iterator(config, seed=1, process_index=0, process_count=1)
  batches = [next(it) for _ in range(2)]  # 8 examples of train+val, batch 4: one epoch
  for b in batches:
    assert b["image"].shape == (4, SIZE, SIZE, 3) and b["image"].dtype == np.float32
  assert sorted(np.concatenate([b["label"] for b in batches]).tolist()) == sorted([0, 199, 5, 0, 199] + [0, 199, 5])


def test_vpt_crop_box_and_transforms():
  rng = np.random.default_rng(0)
  boxes = {transforms.vpt_crop_box(300, 500, rng) for _ in range(50)}
  for top, left, h, w in boxes:
    assert h == w == round(300 * 224 / 256) and 0 <= top <= 300 - h and 0 <= left <= 500 - w
  assert len({(t, l) for t, l, _, _ in boxes}) > 10  # the position is random
  assert transforms.vpt_crop_box(1, 7, rng)[2:] == (1, 1)  # degenerate images still give a non-empty box
  image = np.random.default_rng(1).integers(0, 255, (40, 64, 3), np.uint8)
  out = transforms.Augment(24, "vpt_crop")({"image": image, "label": 3}, np.random.default_rng(2))
  assert out["image"].shape == (24, 24, 3) and out["image"].dtype == np.uint8 and out["label"] == 3
  ev = transforms.EvalTransform(24, "vpt_crop")({"image": image})
  np.testing.assert_array_equal(ev["image"], images.resize_center_crop(image, 24))
  # The VTAB-1k evaluation (whole-image resize) is unchanged.
  np.testing.assert_array_equal(transforms.EvalTransform(24)({"image": image})["image"], images.resize(image, 24))


def test_broken_vpt_release_errors_name_file_and_entry(tmp_path):
  folder, splits = vpt_folder(tmp_path)
  config = _config(tmp_path)
  val = os.path.join(folder, "val.json")
  rels = list(splits["val"])
  with open(val, "w") as f:
    json.dump({rels[0]: 1, "001.Class x/missing.jpg": 2}, f)
  with pytest.raises(UserError, match=rf"{val} entry 1 \('001.Class x/missing.jpg'\): image .*images/001.Class "
                     "x/missing.jpg does not exist"):
    pipeline.num_examples(config, "train+val")
  with open(val, "w") as f:
    json.dump({rels[0]: 1, rels[1]: 200}, f)  # CUB has 200 classes: 0..199
  with pytest.raises(UserError, match=rf"{val} entry 1 .*label 200 out of range \[0, 200\)"):
    pipeline.num_examples(config, "val")
  with open(val, "w") as f:
    json.dump({rels[0]: "3"}, f)
  with pytest.raises(UserError, match=rf"{val} entry 0 .*label '3' .* is not an integer"):
    pipeline.num_examples(config, "val")
  with open(val, "w") as f:
    f.write("{not json")
  with pytest.raises(UserError, match=rf"{val}:1: not valid JSON"):
    pipeline.num_examples(config, "val")
  with open(val, "w") as f:
    json.dump("train", f)
  with pytest.raises(UserError, match=rf"{val}: expected a JSON object"):
    pipeline.num_examples(config, "val")
  os.remove(val)
  with pytest.raises(UserError, match=r"no list file for split 'train\+val' of task 'fgvc/cub' in .*CUB_200_2011: "
                     r"expected train\+val.txt .*or the list files of 'train' and 'val' \(their union\); found "
                     r"\['test.json', 'train.json'\]"):
    pipeline.num_examples(config, "train+val")
  with pytest.raises(UserError, match="needs config.dataset.root.*CUB_200_2011"):
    pipeline.num_examples(_config(""), "train")


def _config_module(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_file_accepts_fgvc_tasks(path):
  module = _config_module(path)
  if path.endswith("_ade20k.py"):  # segmentation configs take segmentation datasets only, and say so
    with pytest.raises(UserError, match="segmentation configs take"):
      module.get_config("task=fgvc/cub")
    return
  for name, classes, _, _ in FGVC_TABLE:
    c = module.get_config(f"task={name}")
    config_lib.validate(c)
    assert (c.dataset.name, c.dataset.num_classes) == (name, classes)
    assert (c.dataset.split, c.dataset.eval_split) == ("train+val", "test")
    assert (c.dataset.source, c.dataset.augment, c.dataset.normalization) == ("folder", "vpt_crop", "imagenet")
  if path.endswith("_video.py"):  # clip configs: their backbones (VideoMAE) set their own input normalisation
    return
  # VTAB-1k defaults are unchanged.
  vtab = module.get_config("task=vtab/dtd")
  assert (vtab.dataset.split, vtab.dataset.eval_split, vtab.dataset.source) == ("train800val200", "test", "tfds")
  assert (vtab.dataset.augment, vtab.dataset.normalization) == ("none", "minus_one_one")


def test_complete_datasets_default_to_their_splits():
  c, _ = config_lib.make_config("adapter", "task=cifar10")
  assert (c.dataset.split, c.dataset.eval_split, c.dataset.augment, c.dataset.num_classes) == ("train", "test",
                                                                                               "none", 10)
  synqt = _config_module(os.path.join(ROOT, "configs", "synqt_vtab.py"))
  c = synqt.get_config("task=fgvc/stanford_dogs")
  assert (c.method.num_queries, c.method.feat_scale, c.method.attn_scale, c.method.ffn_scale) == (4, 0.1, 0.1, 0.1)
