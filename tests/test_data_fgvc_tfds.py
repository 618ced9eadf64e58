"""FGVC over tfds with VPT's split lists (`config.dataset.source='tfds'` + `config.dataset.split_lists`): tfds is
mocked with records whose file names we choose (shuffled, with records no list names, and tfds labels that
differ from the lists'), VPT's JSON lists are generated; the splits must be exactly the listed records, in list
order, with the lists' labels; broken lists fail naming the file and entry; a training run works end to end."""

import json
import os

import numpy as np
import pytest
from tensorflow_datasets import testing as tfds_testing

from vit_adapt import config_lib, train
from vit_adapt.data import datasets, pipeline, tfds_lists
from vit_adapt.errors import UserError

SIZE = 16


def _image(code):
  """A flat image whose red channel is `code`: after the pipeline, which record was read is visible."""
  pixels = np.full((20, 24, 3), 128, np.uint8)
  pixels[..., 0] = code
  return pixels


def _file_name(task, rel):
  """What each builder stores: CUB/Dogs the archive path, Flowers the base name, Cars the bare stem."""
  base = os.path.basename(rel)
  return {"image/filename": f"{task.folder}/{task.image_dir}/{rel}", "file_name": base,
          "id": os.path.splitext(base)[0]}[task.tfds_file_key]


def fake_fgvc(tmp_path, name, n_train=5, n_val=3, n_test=4, extra=2):
  """VPT lists in <tmp>/lists/<folder>/ and the tfds records of each tfds split -> (lists dir, splits, records).

  Official train = VPT train + val + `extra` unlisted records, shuffled; official test = VPT test + 1 unlisted.
  Red channel = 10 + record position in its tfds split; tfds label = 7 everywhere (the lists' labels must win).
  Cars' train and test share file names (as the real cars_train/00001.jpg and cars_test/00001.jpg do)."""
  task = datasets.get_dataset(name)
  top = task.num_classes - 1
  folder = tmp_path / "lists" / task.folder
  folder.mkdir(parents=True)
  splits, pool_rels = {}, {"train": [], "test": []}
  for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
    offset = {"train": 0, "val": 100, "test": 0}[split]
    entries = {f"{i % 3:03d}.Class/img_{offset + i:05d}.jpg": (0, top, 3)[i % 3] for i in range(n)}
    splits[split] = entries
    with open(folder / f"{split}.json", "w") as f:
      json.dump(entries, f)
    pool_rels["test" if split == "test" else "train"] += list(entries)
  pool_rels["train"] += [f"005.Class/img_{900 + i:05d}.jpg" for i in range(extra)]
  pool_rels["test"].append("005.Class/img_00999.jpg")
  rng = np.random.default_rng(0)
  records = {}
  for pool, rels in pool_rels.items():
    rels = [rels[i] for i in rng.permutation(len(rels))]
    records[pool] = [{"image": _image(10 + j), "label": 7, task.tfds_file_key: _file_name(task, rel).encode()}
                     for j, rel in enumerate(rels)]
  return str(tmp_path / "lists"), splits, records


def mocked(records, task):
  """tfds.testing.mock_data serving `records` per tfds split ('a+b' = a then b; Flowers' official train and val
  are one pool of records here)."""
  def as_data_source(builder, split, decoders=None, **kw):
    del decoders, kw
    assert builder.name == task.tfds_name.split(":")[0]
    out = []
    for pool in dict.fromkeys("train" if part in ("train", "validation") else part for part in split.split("+")):
      out += records[pool]
    return out
  return tfds_testing.mock_data(as_data_source_fn=as_data_source)


@pytest.fixture(autouse=True)
def _fresh_index():
  tfds_lists.clear_cache()
  yield
  tfds_lists.clear_cache()


def _config(lists_dir, task="fgvc/cub", **dataset):
  c, _ = config_lib.make_config("linear", f"task={task}")
  c.model.image_size = SIZE
  c.train.batch_size = 4
  c.eval.batch_size = 4
  c.dataset.update(source="tfds", split_lists=lists_dir, num_threads=2, **dataset)
  return c


def _read(config, split):
  batches = list(pipeline.eval_batches(config, split, process_index=0, process_count=1))
  labels = np.concatenate([b["label"][b["mask"]] for b in batches]).tolist()
  # Flat images survive resize + crop: undo ImageNet normalisation of the red channel to read the record code.
  red = np.concatenate([b["image"][b["mask"]][:, 0, 0, 0] for b in batches]) * 0.229 + 0.485
  return labels, np.rint(red * 255).astype(int).tolist()


def _codes(task, records, pool, rels):
  """The red code of the record of each list entry, found by its file name."""
  names = [r[task.tfds_file_key].decode() for r in records[pool]]
  return [10 + names.index(_file_name(task, rel)) for rel in rels]


TFDS_FGVC = [("fgvc/cub", "caltech_birds2011:0.2.*", "image/filename"),
             ("fgvc/oxford_flowers", "oxford_flowers102:2.*.*", "file_name"),
             ("fgvc/stanford_dogs", "stanford_dogs:0.2.*", "image/filename"),
             ("fgvc/stanford_cars", "cars196:2.1.*", "id")]


def test_records_name_builders_file_features_and_pools():
  for name, tfds_name, key in TFDS_FGVC:
    d = datasets.get_dataset(name)
    assert (d.tfds_name, d.tfds_file_key) == (tfds_name, key)
    train_pool = "train+validation" if name == "fgvc/oxford_flowers" else "train"
    assert [d.tfds_split(s) for s in ("train", "val", "train+val", "test")] == [train_pool] * 3 + ["test"]
  nabirds = datasets.get_dataset("fgvc/nabirds")
  assert (nabirds.tfds_name, nabirds.tfds_file_key) == (None, "")
  with pytest.raises(UserError, match="not available in tensorflow_datasets.*source='folder'"):
    nabirds.tfds_split("train")


def test_builders_expose_the_file_name_features():
  """The installed tfds builders (no data needed: their feature specs) have the features the registry names."""
  import tensorflow_datasets as tfds
  for _, tfds_name, key in TFDS_FGVC:
    builder = tfds.builder(tfds_name, data_dir="/nonexistent-vit-adapt")
    assert key in builder.info.features, (tfds_name, key)
    assert isinstance(builder.info.features[key], tfds.features.Text)


@pytest.mark.parametrize("name", [row[0] for row in TFDS_FGVC])
def test_lists_select_and_label_the_tfds_records(name, tmp_path):
  task = datasets.get_dataset(name)
  lists_dir, splits, records = fake_fgvc(tmp_path, name)
  config = _config(lists_dir, name)
  with mocked(records, task):
    sizes = {s: pipeline.num_examples(config, s) for s in ("train", "val", "train+val", "test")}
    assert sizes == {"train": 5, "val": 3, "train+val": 8, "test": 4}
    for split in ("train", "val", "test"):
      labels, codes = _read(config, split)
      assert labels == list(splits[split].values())
      assert codes == _codes(task, records, "test" if split == "test" else "train", splits[split])
    labels, codes = _read(config, "train+val")
    assert labels == list(splits["train"].values()) + list(splits["val"].values())
    assert codes == _codes(task, records, "train", list(splits["train"]) + list(splits["val"]))
    assert set(labels) == {0, task.num_classes - 1, 3}  # the lists' labels, never tfds's 7
    # split_lists may also be the dataset's own folder; training batches come from the same records.
    config = _config(os.path.join(lists_dir, task.folder), name)
    it = pipeline.train_iterator(config, seed=0, process_index=0, process_count=1)
    got = np.concatenate([next(it)["label"] for _ in range(2)])
  assert sorted(got.tolist()) == sorted(labels)


def test_missing_or_wrong_lists_say_what_to_do(tmp_path):
  task = datasets.get_dataset("fgvc/cub")
  lists_dir, splits, records = fake_fgvc(tmp_path, "fgvc/cub")
  folder = os.path.join(lists_dir, task.folder)
  with mocked(records, task):
    with pytest.raises(UserError, match=r"source='tfds' for task 'fgvc/cub' needs config.dataset.split_lists.*"
                       r"train.json, val.json and test.json"):
      pipeline.num_examples(_config(""), "train")
    with pytest.raises(UserError, match=r"split-list folder '/nope' \(config.dataset.split_lists\) does not exist"):
      pipeline.num_examples(_config("/nope"), "train")
    val = os.path.join(folder, "val.json")
    rels = list(splits["val"])
    with open(val, "w") as f:
      json.dump({rels[0]: 1, "001.Class/not_in_tfds.jpg": 2, "001.Class/img_00000.jpg": 0}, f)
    # img_00000 is a train image: it is found (in the official train set); not_in_tfds is not.
    with pytest.raises(UserError, match=rf"1 of 3 entries of {val} have no record of the same file name in tfds "
                       r"caltech_birds2011:0.2.\* split 'train' \(10 records\) \(feature 'image/filename'\), e.g. "
                       rf"{val} entry 1 \('001.Class/not_in_tfds.jpg'\). Check that config.dataset.split_lists"):
      pipeline.num_examples(_config(lists_dir), "val")
    with open(val, "w") as f:
      json.dump({rels[0]: 200}, f)
    with pytest.raises(UserError, match=rf"{val} entry 0 .*label 200 out of range \[0, 200\)"):
      pipeline.num_examples(_config(lists_dir), "val")
    with open(val, "w") as f:
      json.dump([{rels[0]: 1}], f)
    with pytest.raises(UserError, match=rf"{val}: expected VPT's FGVC list, a JSON object"):
      pipeline.num_examples(_config(lists_dir), "val")
    os.remove(val)
    with pytest.raises(UserError, match=r"no list file for split 'train\+val' of task 'fgvc/cub'.*found "
                       r"\['test.json', 'train.json'\]"):
      pipeline.num_examples(_config(lists_dir), "train+val")


def test_duplicate_file_names_are_ambiguous(tmp_path):
  task = datasets.get_dataset("fgvc/stanford_cars")
  lists_dir, splits, records = fake_fgvc(tmp_path, "fgvc/stanford_cars")
  records["train"].append(dict(records["train"][0]))  # two records named like the first one
  first = records["train"][0]["id"].decode()
  listed = {os.path.splitext(os.path.basename(r))[0]: s for s in ("train", "val") for r in splits[s]}
  with mocked(records, task), pytest.raises(UserError, match=rf"several records of tfds cars196.*have the file name "
                                            rf"'{first}'.*ambiguous"):
    pipeline.num_examples(_config(lists_dir, "fgvc/stanford_cars"), listed[first])


def test_training_run_on_mocked_tfds_fgvc(tiny_config, fast_compile, tmp_path):
  task = datasets.get_dataset("fgvc/stanford_dogs")
  lists_dir, splits, records = fake_fgvc(tmp_path, "fgvc/stanford_dogs", n_train=10, n_val=6, n_test=8)
  config = tiny_config("adapter", "task=fgvc/stanford_dogs")
  config.dataset.update(source="tfds", split_lists=lists_dir)
  config.eval.batch_size = 8
  with mocked(records, task):
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "results.json") as f:
    on_disk = json.load(f)
  assert on_disk["task"] == "fgvc/stanford_dogs" and on_disk["num_eval_examples"] == 8
  assert on_disk["top1"] == results["top1"] and 0.0 <= on_disk["top1"] <= 1.0
  assert "mean_per_class_accuracy" in on_disk
