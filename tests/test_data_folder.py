"""Image-folder sources (NOAH/VPT list files and SynQT JSON lists) on generated folders, and their errors."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from vit_adapt import config_lib
from vit_adapt.data import images, pipeline
from vit_adapt.errors import UserError

SIZE = 16


def _write_images(folder, n, *, fmt="png"):
  """n distinct images (solid colour i * 20 plus a gradient) of varied sizes; returns relative paths."""
  rels = []
  for i in range(n):
    h, w = 20 + 3 * i, 30 - i
    pixels = np.full((h, w, 3), i * 20, np.uint8)
    pixels[:, :, 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    rel = f"images/class_{i % 3}/img {i}.{fmt}"  # a space in the name: list lines split on the last blank
    os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
    Image.fromarray(pixels).save(os.path.join(folder, rel), quality=95)
    rels.append(rel)
  return rels


def _noah_folder(root, n=10, task_folder="dtd"):
  folder = os.path.join(root, task_folder)
  rels = _write_images(folder, n, fmt="png")[: n // 2] + _write_images(folder, n, fmt="jpg")[n // 2:]
  labels = [(7 * i) % 47 for i in range(n)]
  lines = [f"{r} {l}" for r, l in zip(rels, labels)]
  for split, sel in {"train800": lines[:6], "val200": lines[6:], "train800val200": lines, "test": lines}.items():
    with open(os.path.join(folder, f"{split}.txt"), "w") as f:
      f.write("\n".join(sel) + "\n\n")
  return folder, rels, labels


def _config(root, task="vtab/dtd", **dataset):
  c, _ = config_lib.make_config("linear", f"task={task}")
  c.model.image_size = SIZE
  c.train.batch_size = 4
  c.eval.batch_size = 4
  c.dataset.update(source="folder", root=str(root), num_threads=2, **dataset)
  return c


def _expected(path):
  return images.normalize(images.resize(images.decode(path), SIZE))


def test_noah_layout_eval_is_exact_and_counts_each_image_once(tmp_path):
  folder, rels, labels = _noah_folder(tmp_path)
  config = _config(tmp_path)
  assert pipeline.num_examples(config) == 10 and pipeline.num_examples(config, "val200") == 4
  batches = list(pipeline.eval_batches(config, process_index=0, process_count=1))
  assert len(batches) == 3 and [int(b["mask"].sum()) for b in batches] == [4, 4, 2]
  got = np.concatenate([b["image"][b["mask"]] for b in batches])
  expected = np.stack([_expected(os.path.join(folder, r)) for r in rels])
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert np.concatenate([b["label"][b["mask"]] for b in batches]).tolist() == labels
  assert (batches[-1]["image"][~batches[-1]["mask"]] == -1).all()  # padding is black
  # Root may also be the task folder itself.
  assert pipeline.num_examples(_config(folder)) == 10


def test_noah_layout_training_batches(tmp_path):
  _, _, labels = _noah_folder(tmp_path)
  config = _config(tmp_path, split="train800")
  it = pipeline.train_iterator(config, seed=3, process_index=0, process_count=1)
  epoch = [next(it) for _ in range(3)]  # 6 examples, batch 4: batches span epochs, remainder never dropped
  for b in epoch:
    assert b["image"].shape == (4, SIZE, SIZE, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and set(b["label"].tolist()) <= set(labels[:6])
  seen = np.concatenate([b["label"] for b in epoch])[:6]
  assert sorted(seen.tolist()) == sorted(labels[:6])  # the first epoch is a permutation of the split


def test_synqt_json_lists(tmp_path):
  folder = tmp_path / "cifar"
  rels = _write_images(str(folder / "images"), 5, fmt="jpg")  # paths in the JSON are under images/
  entries = [{r: i * 11} for i, r in enumerate(rels)]
  (folder / "train800val200.json").write_text(json.dumps(entries))
  (folder / "test.json").write_text(json.dumps(entries[:3]))
  config = _config(tmp_path, task="vtab/cifar100")
  assert pipeline.num_examples(config) == 5 and pipeline.num_examples(config, "test") == 3
  batches = list(pipeline.eval_batches(config, "train800val200", process_index=0, process_count=1))
  assert np.concatenate([b["label"][b["mask"]] for b in batches]).tolist() == [0, 11, 22, 33, 44]
  got = np.concatenate([b["image"][b["mask"]] for b in batches])
  np.testing.assert_allclose(got, np.stack([_expected(str(folder / "images" / r)) for r in rels]), atol=1e-6)
  batch = next(pipeline.train_iterator(config, seed=0, process_index=0, process_count=1))
  assert batch["image"].shape == (4, SIZE, SIZE, 3)


def _write_list(folder, split, lines):
  path = os.path.join(folder, f"{split}.txt")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def test_missing_image_names_list_file_and_line(tmp_path):
  folder, rels, _ = _noah_folder(tmp_path)
  path = _write_list(folder, "train800val200", [f"{rels[0]} 1", f"{rels[1]} 2", "images/missing.jpg 3"])
  with pytest.raises(UserError, match=rf"{path}:3: image .*images/missing.jpg does not exist"):
    pipeline.train_iterator(_config(tmp_path), seed=0, process_index=0, process_count=1)


def test_label_out_of_range_names_list_file_and_line(tmp_path):
  folder, rels, _ = _noah_folder(tmp_path)
  path = _write_list(folder, "test", [f"{rels[0]} 1", f"{rels[1]} 47"])  # dtd has 47 classes: 0..46
  with pytest.raises(UserError, match=rf"{path}:2: label 47 out of range \[0, 47\)"):
    pipeline.eval_batches(_config(tmp_path), process_index=0, process_count=1)
  path = _write_list(folder, "test", [f"{rels[0]} -1"])
  with pytest.raises(UserError, match=rf"{path}:1: label -1 out of range"):
    pipeline.num_examples(_config(tmp_path), "test")
  path = _write_list(folder, "test", [f"{rels[0]} 1", "just_a_path.jpg"])
  with pytest.raises(UserError, match=rf"{path}:2: expected `relative/path integer_label`"):
    pipeline.num_examples(_config(tmp_path), "test")
  (tmp_path / "dtd" / "test.txt").unlink()
  (tmp_path / "dtd" / "test.json").write_text(json.dumps([{rels[0][len("images/"):]: 3}, {rels[1][len("images/"):]: 99}]))
  with pytest.raises(UserError, match=r"test.json entry 1: label 99 out of range"):
    pipeline.num_examples(_config(tmp_path), "test")


def test_corrupt_image_names_file_and_line(tmp_path):
  folder, rels, _ = _noah_folder(tmp_path)
  bad = os.path.join(folder, "images", "truncated.jpg")
  with open(os.path.join(folder, rels[-1]), "rb") as f:
    data = f.read()
  with open(bad, "wb") as f:
    f.write(b"not an image" + data[100:200])
  path = _write_list(folder, "test", [f"{rels[0]} 1", f"{rels[1]} 2", "images/truncated.jpg 3"])
  batches = pipeline.eval_batches(_config(tmp_path), process_index=0, process_count=1)
  with pytest.raises(UserError, match=rf"cannot decode {bad} \({path}:3\)"):
    list(batches)


def test_missing_root_and_list_file(tmp_path):
  with pytest.raises(UserError, match="config.dataset.root"):
    pipeline.num_examples(_config(""))
  with pytest.raises(UserError, match="does not exist"):
    pipeline.num_examples(_config(tmp_path / "nope"))
  (tmp_path / "dtd").mkdir()
  with pytest.raises(UserError, match=r"expected train800val200.txt \(NOAH/VPT\) or train800val200.json"):
    pipeline.num_examples(_config(tmp_path))


def test_multi_host_eval_shards_cover_each_example_once(tmp_path):
  folder, rels, labels = _noah_folder(tmp_path)
  config = _config(tmp_path)
  per_host = [list(pipeline.eval_batches(config, batch_size=6, process_index=p, process_count=3))
              for p in range(3)]
  assert [len(b) for b in per_host] == [2, 2, 2]  # ceil(ceil(10 / 3) / 2): equal on every host
  assert all(b["image"].shape == (2, SIZE, SIZE, 3) for host in per_host for b in host)
  # Channel 0 encodes the image index (solid colour i * 20).
  seen = [round((float(b["image"][j, 0, 0, 0]) + 1) * 127.5 / 20) for host in per_host for b in host
          for j in np.nonzero(b["mask"])[0]]
  assert sorted(seen) == list(range(10))


def test_multi_host_training_reads_only_its_shard(tmp_path):
  _noah_folder(tmp_path)
  config = _config(tmp_path)
  config.train.batch_size = 4
  for p in range(2):
    it = pipeline.train_iterator(config, seed=0, process_index=p, process_count=2)
    batches = [next(it) for _ in range(5)]
    assert batches[0]["image"].shape == (2, SIZE, SIZE, 3)
    seen = {round((float(x) + 1) * 127.5 / 20) for b in batches for x in b["image"][:, 0, 0, 0]}
    assert seen == set(range(p, 10, 2))


def test_folder_path_imports_no_tensorflow(tmp_path):
  _noah_folder(tmp_path)
  code = textwrap.dedent(f"""
      import sys
      from vit_adapt import config_lib
      from vit_adapt.data import pipeline
      c, _ = config_lib.make_config("linear", "task=vtab/dtd")
      c.model.image_size = 16; c.train.batch_size = 2
      c.dataset.update(source="folder", root={str(tmp_path)!r})
      next(pipeline.train_iterator(c, seed=0, process_index=0, process_count=1))
      list(pipeline.eval_batches(c, batch_size=4, process_index=0, process_count=1))
      assert not any(m == "tensorflow" or m.startswith(("tensorflow.", "tensorflow_datasets")) for m in sys.modules)
      """)
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
