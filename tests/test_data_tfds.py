"""The tfds path: all 19 VTAB-1k tasks through the full pipeline under `tfds.testing.mock_data`, a real ArrayRecord
dataset prepared by tfds (its DummyMnist test builder), and the errors for missing / unprepared / tfrecord data."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets import testing as tfds_testing

from vit_adapt import config_lib
from vit_adapt.data import pipeline, prepare
from vit_adapt.data import datasets
from vit_adapt.errors import UserError

SIZE, BATCH, MOCK_N = 32, 4, 6


def _config(task, **dataset):
  c, _ = config_lib.make_config("linear", f"task={task}")
  c.model.image_size = SIZE
  c.train.batch_size = BATCH
  c.eval.batch_size = BATCH
  c.dataset.num_threads = 2
  c.dataset.update(dataset)
  return c


def _mock_safe(task):
  """Mocked examples draw every sequence feature's length independently (so CLEVR/KITTI objects have ragged
  fields) and derived labels can leave their range: truncate to a common length, then clip (vtab.md traps)."""
  def label_fn(ex):
    if "objects" in ex:
      n = min(len(v) for v in ex["objects"].values())
      ex = {**ex, "objects": {k: v[:n] for k, v in ex["objects"].items()}}
    return int(np.clip(task.label_fn(ex), 0, task.num_classes - 1))
  return dataclasses.replace(task, label_fn=label_fn)


@pytest.fixture
def split_calls(monkeypatch):
  """Records the split string of every tfds.data_source call."""
  calls = []
  original = tfds.data_source

  def spy(name, *, split=None, **kw):
    calls.append((name, split))
    return original(name, split=split, **kw)

  monkeypatch.setattr(tfds, "data_source", spy)
  return calls


@pytest.mark.parametrize("name", datasets.VTAB_1K)
def test_vtab_task_through_pipeline_under_mock_data(name, monkeypatch, split_calls):
  task = datasets.get_dataset(name)
  monkeypatch.setitem(datasets._REGISTRY, name, _mock_safe(task))
  config = _config(name)
  with tfds.testing.mock_data(num_examples=MOCK_N):
    batch = next(pipeline.train_iterator(config, seed=0, process_index=0, process_count=1))
    evals = list(pipeline.eval_batches(config, process_index=0, process_count=1))
    n_val = pipeline.num_examples(_config(name, split="train800"), "val200")
  assert split_calls == [(task.tfds_name, f"train[:800]+{task.tfds_split('val200')}"),
                         (task.tfds_name, task.tfds_split("test")),
                         (task.tfds_name, task.tfds_split("val200"))]
  assert batch["image"].shape == (BATCH, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (BATCH,) and batch["label"].dtype == np.int32
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0 and np.ptp(batch["image"]) > 0
  assert set(batch) == {"image", "label"}
  labels = np.concatenate([b["label"][b["mask"]] for b in evals])
  assert len(labels) == MOCK_N and sum(b["mask"].sum() for b in evals) == MOCK_N
  assert ((0 <= labels) & (labels < task.num_classes)).all()
  assert all(b["image"].shape == (BATCH, SIZE, SIZE, 3) for b in evals)
  assert n_val == MOCK_N


def test_dsprites_binary_images_become_black_and_white(monkeypatch):
  """dSprites stores {0, 1}: the channel fix must scale to {0, 255} before normalising (else all ~-1)."""
  name = "vtab/dsprites_loc"
  monkeypatch.setitem(datasets._REGISTRY, name, _mock_safe(datasets.get_dataset(name)))
  config = _config(name)
  config.model.image_size = 64  # no resampling: pixels stay exactly -1 or 1
  with tfds.testing.mock_data(num_examples=MOCK_N, max_value=2):
    batch = next(iter(pipeline.eval_batches(config, process_index=0, process_count=1)))
  assert set(np.unique(batch["image"][batch["mask"]])) == {-1.0, 1.0}


# --- A real ArrayRecord dataset: tfds's DummyMnist test builder (20 28x28 grayscale PNGs per split). ---

_DUMMY = datasets.Dataset(name="test/dummy_mnist", kind="complete", num_classes=10, tfds_name="dummy_mnist",
                    splits=(("train", "train"), ("test", "test[:13]")), channel_fix="tile")


@pytest.fixture(scope="module")
def prepared_dirs(tmp_path_factory):
  dirs = {}
  for fmt in ("array_record", "tfrecord"):
    d = str(tmp_path_factory.mktemp(fmt))
    tfds_testing.DummyMnist(data_dir=d).download_and_prepare(file_format=fmt)
    dirs[fmt] = d
  return dirs


@pytest.fixture
def dummy_task(monkeypatch):
  monkeypatch.setitem(datasets._REGISTRY, _DUMMY.name, _DUMMY)
  return _DUMMY


def test_array_record_dataset_end_to_end(prepared_dirs, dummy_task):
  config = _config(dummy_task.name, split="train", data_dir=prepared_dirs["array_record"])
  assert pipeline.num_examples(config) == 20 and pipeline.num_examples(config, "test") == 13
  it = pipeline.train_iterator(config, seed=0, process_index=0, process_count=1)
  batches = [next(it) for _ in range(5)]  # one epoch of 20 records
  assert sorted(np.concatenate([b["label"] for b in batches]).tolist()) == sorted(
      int(ex["label"]) for ex in tfds.data_source("dummy_mnist", split="train",
                                                    data_dir=prepared_dirs["array_record"]))
  # Evaluation decodes the stored PNGs itself: compare with tfds's own decoding, resized and normalised.
  reference = tfds.data_source("dummy_mnist", split="test[:13]", data_dir=prepared_dirs["array_record"])
  evals = list(pipeline.eval_batches(config, process_index=0, process_count=1))
  images = np.concatenate([b["image"][b["mask"]] for b in evals])
  from vit_adapt.data import images as images_lib
  expected = np.stack([images_lib.normalize(images_lib.resize(ex["image"], SIZE)) for ex in reference])
  np.testing.assert_allclose(images, expected, atol=1e-6)
  assert [int(x) for b in evals for x in b["label"][b["mask"]]] == [int(ex["label"]) for ex in reference]


def test_tfrecord_dataset_says_how_to_reprepare(prepared_dirs, dummy_task):
  config = _config(dummy_task.name, split="train", data_dir=prepared_dirs["tfrecord"])
  with pytest.raises(UserError, match=r"prepared as tfrecord.*ArrayRecord.*python -m vit_adapt.data.prepare"):
    pipeline.num_examples(config)
  with pytest.raises(UserError, match="prepared as tfrecord"):
    prepare.prepare("dummy_mnist", prepared_dirs["tfrecord"])
  assert "already prepared" in prepare.prepare("dummy_mnist", prepared_dirs["array_record"])


def test_prepare_writes_array_record(tmp_path, dummy_task, monkeypatch):
  # DummyMnist is not in tfds's registry: hand its builder to `prepare` where it asks tfds for one.
  original = tfds.builder
  monkeypatch.setattr(tfds, "builder", lambda name, **kw: tfds_testing.DummyMnist(**kw) if name == "dummy_mnist"
                      else original(name, **kw))
  assert "prepared (array_record)" in prepare.prepare("dummy_mnist", str(tmp_path))
  config = _config(dummy_task.name, split="train", data_dir=str(tmp_path))
  assert pipeline.num_examples(config) == 20


def test_missing_data_dir(tmp_path):
  config = _config("vtab/dtd", data_dir=str(tmp_path / "nope"))
  with pytest.raises(UserError, match=r"does not exist.*prepare --task=vtab/dtd"):
    pipeline.num_examples(config)


def test_unprepared_task(tmp_path):
  config = _config("vtab/dtd", data_dir=str(tmp_path))
  with pytest.raises(UserError, match=rf"not prepared in {tmp_path}.*prepare --task=vtab/dtd --data_dir={tmp_path}"):
    pipeline.train_iterator(config, seed=0, process_index=0, process_count=1)
  config = _config("vtab/resisc45", data_dir=str(tmp_path))
  with pytest.raises(UserError, match="manual download"):
    pipeline.num_examples(config)


def _run_prepare(*args):
  return subprocess.run([sys.executable, "-m", "vit_adapt.data.prepare", *args], capture_output=True, text=True,
                        timeout=120)


def test_prepare_cli_manual_download_and_bad_task(tmp_path):
  r = _run_prepare("--task=vtab/resisc45", f"--data_dir={tmp_path}")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "NWPU-RESISC45.rar" in r.stderr and f"{tmp_path}/downloads/manual/NWPU-RESISC45" in r.stderr
  r = _run_prepare("--task=vtab/diabetic_retinopathy", f"--data_dir={tmp_path}", "--dry_run")
  assert r.returncode == 0 and "kaggle.com/c/diabetic-retinopathy-detection" in r.stdout
  assert f"{tmp_path}/downloads/manual/trainLabels.csv" in r.stdout
  r = _run_prepare("--task=vtab/nope", f"--data_dir={tmp_path}")
  assert r.returncode == 2 and "Traceback" not in r.stderr and "vtab/smallnorb_ele" in r.stderr
