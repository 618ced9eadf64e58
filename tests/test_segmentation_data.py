"""The segmentation data pipeline on generated ADE20K-layout folders: label maps survive decoding, rescaling,
cropping, flipping and padding bit-exactly (nearest only, 255 padding), and broken files are UserErrors naming
the file."""

import os

import numpy as np
import pytest
from PIL import Image

from vit_adapt.data import datasets
from vit_adapt.data import segmentation as seg
from vit_adapt.errors import UserError

ADE = datasets.get_dataset("ade20k")


def _ade_folder(root, labels: dict, split="training"):
  """Writes <root>/ADEChallengeData2016/{images,annotations}/<split>/<id>.png; each image's every channel holds
  its raw label value (so image and label can be compared after geometric transforms)."""
  base = os.path.join(root, "ADEChallengeData2016")
  for d in ("images", "annotations"):
    os.makedirs(os.path.join(base, d, split), exist_ok=True)
  for stem, raw in labels.items():
    Image.fromarray(np.repeat(raw[..., None], 3, -1)).save(os.path.join(base, "images", split, stem + ".png"))
    Image.fromarray(raw, "L").save(os.path.join(base, "annotations", split, stem + ".png"))
  return base


def _ade_ids(raw):
  return np.where(raw == 0, 255, raw.astype(np.int32) - 1)


def _random_raw(rng, h, w, values=(0, 7, 151)):
  return rng.choice(np.array(values, np.uint8), size=(h, w))


def test_decoded_label_map_is_exact(tmp_path):
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 151, (13, 17)).astype(np.uint8)
  _ade_folder(tmp_path, {"a": raw})
  source = seg.FolderPairs(ADE, "train", str(tmp_path))
  image, label = seg.load_pair(source[0], ADE)
  np.testing.assert_array_equal(label.astype(np.int32), _ade_ids(raw))
  np.testing.assert_array_equal(image[..., 1], raw)


@pytest.mark.parametrize("ratio", [1.0, 1.7, 0.6])
def test_train_transform_keeps_labels_exact(tmp_path, ratio):
  rng = np.random.default_rng(1)
  raw = _random_raw(rng, 20, 28)
  _ade_folder(tmp_path, {"a": raw})
  record = seg.FolderPairs(ADE, "train", str(tmp_path))[0]
  crop = 24
  transform = seg.TrainTransform(ADE, crop, scale=(28, 20), ratio_range=(ratio, ratio), cat_max_ratio=1.0,
                                 photometric=False, normalization="minus_one_one")
  for seed in range(4):
    out = transform(record, np.random.default_rng(seed))
    label = out["label"]
    assert label.shape == (crop, crop) and label.dtype == np.int32
    # Nearest neighbour only: no label value that is not in the map (or the 255 of ignore/padding).
    assert set(np.unique(label)) <= {6, 150, 255}
    if ratio == 1.0:
      # No rescale: the crop (+ flip) of the exact map, padded with 255 below/right of the 20 rows.
      assert (label[20:] == 255).all()
      ids = _ade_ids(raw)
      y = 0
      for x in range(28 - crop + 1):
        if (label[:20] == ids[y:y + 20, x:x + crop]).all() or (label[:20] == ids[y:y + 20, x:x + crop][:, ::-1]).all():
          break
      else:
        pytest.fail("the training label is not a (flipped) crop of the label map")
    # The image went through the same geometry: where labelled, its pixels still say the raw label.
    pixel = np.round((out["image"][..., 0] + 1) * 127.5).astype(np.int32)
    labelled = label != 255
    if ratio == 1.0:
      np.testing.assert_array_equal(_ade_ids(pixel[labelled].astype(np.uint8)), label[labelled])


def test_eval_transform_keeps_labels_exact(tmp_path):
  rng = np.random.default_rng(2)
  raw = _random_raw(rng, 10, 14)
  _ade_folder(tmp_path, {"a": raw}, split="validation")
  record = seg.FolderPairs(ADE, "validation", str(tmp_path))[0]
  # Twice the size (20 x 28) on a 24 x 32 canvas: nearest upsampling, then 255 padding.
  out = seg.EvalTransform(ADE, scale=(28, 20), size=(24, 32), normalization="minus_one_one")(record)
  expected = _ade_ids(np.asarray(Image.fromarray(raw).resize((28, 20), Image.NEAREST)))
  np.testing.assert_array_equal(out["label"][:20, :28], expected)
  assert (out["label"][20:] == 255).all() and (out["label"][:, 28:] == 255).all()
  assert bool(out["mask"])


def test_corrupt_image_names_its_file(tmp_path):
  raw = _random_raw(np.random.default_rng(3), 8, 8)
  base = _ade_folder(tmp_path, {"a": raw})
  bad = os.path.join(base, "images", "training", "a.png")
  with open(bad, "wb") as f:
    f.write(b"not a png at all")
  record = seg.FolderPairs(ADE, "train", str(tmp_path))[0]
  with pytest.raises(UserError, match="a.png"):
    seg.load_pair(record, ADE)


def test_wrong_sized_label_map_names_its_file(tmp_path):
  rng = np.random.default_rng(4)
  base = _ade_folder(tmp_path, {"a": _random_raw(rng, 8, 8)})
  label_path = os.path.join(base, "annotations", "training", "a.png")
  Image.fromarray(_random_raw(rng, 8, 9), "L").save(label_path)
  record = seg.FolderPairs(ADE, "train", str(tmp_path))[0]
  with pytest.raises(UserError, match=r"annotations/training/a\.png"):
    seg.load_pair(record, ADE)


def test_corrupt_label_map_names_its_file(tmp_path):
  base = _ade_folder(tmp_path, {"a": _random_raw(np.random.default_rng(5), 8, 8)})
  label_path = os.path.join(base, "annotations", "training", "a.png")
  with open(label_path, "wb") as f:
    f.write(b"\x89PNG broken")
  with pytest.raises(UserError, match=r"annotations/training/a\.png"):
    seg.load_pair(seg.FolderPairs(ADE, "train", str(tmp_path))[0], ADE)


def test_demo_scenes_are_deterministic_colour_coded_and_chance_is_as_documented():
  from vit_adapt.data import segmentation_demo as demo_seg
  image, label = demo_seg.scene("train", 3)
  again = demo_seg.scene("train", 3)
  np.testing.assert_array_equal(image, again[0])
  np.testing.assert_array_equal(label, again[1])
  scenes = [demo_seg.scene("test", i) for i in range(demo_seg.SIZES["test"])]
  images = np.stack([s[0] for s in scenes]).astype(np.float32)
  labels = np.stack([s[1] for s in scenes])
  assert set(np.unique(labels)) == set(range(demo_seg.NUM_CLASSES))
  share = float(np.mean(labels == 0))
  assert round(share, 2) == 0.80  # the module doc's chance level: mIoU of all-background = share / 5 = 0.16
  for cls, family in demo_seg.PALETTE.items():  # each class's pixels lean to its colour family
    mean = images[labels == cls].mean(axis=0)
    bright = [c for c, (lo, _) in enumerate(family) if lo > 100]
    dark = [c for c, (lo, _) in enumerate(family) if lo < 100]
    assert min(mean[bright]) > max(mean[dark]) + 60, (cls, mean)
  assert images[labels == 0].mean() < 80
