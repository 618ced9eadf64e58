"""The clip pipeline on real (generated) mp4 and webm files in both layouts: exact frame indices of every sampling
mode, deterministic test views, corrupt videos (error or counted skip), resume, and the embedded demo clips."""

import json
import os

import numpy as np
import pytest
import video_files as vf

from vit_adapt import config_lib, tasks
from vit_adapt.data.video import augment, demo, layouts, pipeline, sampling
from vit_adapt.errors import UserError


# ----------------------------------------------------------------------------------------------- sampling rules

def test_dense_train_indices():
  rng = np.random.default_rng(3)
  start = int(np.random.default_rng(3).integers(40 - 9))
  assert sampling.dense_train(40, 4, 3, rng) == [start, start + 3, start + 6, start + 9]
  # Shorter than the window (4 frames x stride 4 > 10): 0, 4, 8, then the last index repeats.
  assert sampling.dense_train(10, 4, 4, rng) == [0, 4, 8, 8]
  starts = {sampling.dense_train(20, 2, 5, np.random.default_rng(s))[0] for s in range(200)}
  assert starts == set(range(15))  # uniform over [0, n - (T - 1) * stride)


def test_dense_test_views():
  # 100 frames, 8 x stride 4: window 29, slide 71; three views start at 0, round(35.5) = 36, 71.
  views = sampling.dense_test(100, 8, 4, 3)
  assert [v[0] for v in views] == [0, 36, 71] and views[2] == list(range(71, 100, 4))
  assert sampling.dense_test(100, 8, 4, 1) == [list(range(35, 35 + 29, 4))]  # the central window
  assert sampling.dense_test(5, 4, 4, 1) == [[0, 4, 4, 4]]  # clamped to the last frame


def test_segment_indices():
  # 17 frames, 4 segments of 4: bounds (0,4) (4,8) (8,12) (12,16); test = the middle frame of each.
  assert sampling.segment_test(17, 4, 0, 1) == [[2, 6, 10, 14]]
  assert sampling.segment_test(17, 4, 0, 2) == [[1, 5, 9, 13], [3, 7, 11, 15]]
  rng = np.random.default_rng(0)
  draws = np.array([sampling.segment_train(17, 4, 0, rng) for _ in range(400)])
  for i, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 12), (12, 16)]):
    assert set(draws[:, i]) == set(range(lo, hi + 1))  # one uniform frame per segment, bounds inclusive
  # Python's round: 8 segments of 30 frames -> (29 / 8) * i rounded half to even.
  seg = 29 / 8
  assert sampling.segment_test(30, 8, 0, 1)[0] == [(round(seg * i) + round(seg * (i + 1))) // 2 for i in range(8)]


def test_spatial_views_and_augments():
  clip = np.arange(2 * 32 * 48 * 3, dtype=np.uint8).reshape(2, 32, 48, 3)
  crops = augment.spatial_crops(clip, 32, 3)  # short side already 32: crops at x = 0, 8, 16
  assert [c.shape for c in crops] == [(2, 32, 32, 3)] * 3
  np.testing.assert_array_equal(crops[1], clip[:, :, 8:40])
  np.testing.assert_array_equal(augment.spatial_crops(clip, 32, 1)[0], clip[:, :, 8:40])
  rng = np.random.default_rng(0)
  jitter = augment.TrainAugment(24, "scale_jitter", flip=True)
  assert jitter(clip, rng).shape == (2, 24, 24, 3)
  rrc = augment.TrainAugment(24, "randaug_rrc", flip=False, randaugment="rand-m7-n4-mstd0.5-inc1")
  out = rrc(np.random.default_rng(1).integers(0, 255, (3, 32, 48, 3), dtype=np.uint8), rng)
  assert out.shape == (3, 24, 24, 3) and out.dtype == np.uint8
  assert augment.RandAugment.parse("rand-m7-n4-mstd0.5-inc1") == augment.RandAugment(4, 7.0, 0.5)
  with pytest.raises(UserError, match="randaugment"):
    augment.RandAugment.parse("augmix-m5")


# ----------------------------------------------------------------------------------------------- layouts + pipeline

def _config(name, root, **video):
  c, _ = config_lib.make_config("linear", f"task={name}")
  c.video.update(model="frames", **video)
  c.dataset.update(root=str(root), num_threads=2, prefetch=1)
  c.model.image_size = 32
  c.train.batch_size = 2
  c.eval.batch_size = 2
  return c


@pytest.fixture(scope="module")
def k400(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("k400"))
  vf.k400_list(root, {"a": (30, 0), "b": (24, 1), "c": (9, 2)}, split="train")
  vf.k400_list(root, {"a": (30, 0), "c": (9, 2), "b": (24, 1)}, split="val")
  return root


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ssv2"))
  return vf.ssv2_release(root, {"11": (17, 0), "12": (24, 2), "13": (30, 1), "14": (17, 1)})


def test_k400_list_and_csv_layouts(k400, tmp_path):
  listing = layouts.read("k400_list", k400, "val")
  assert [(os.path.basename(p), y) for p, y, _ in listing.items] == [("a.mp4", 0), ("c.mp4", 2), ("b.mp4", 1)]
  with open(tmp_path / "train.csv", "w") as f:
    f.write("label,youtube_id,time_start,time_end,split\nyoga,abc,3,13,train\narchery,xyz,0,10,train\n")
  with open(tmp_path / "validate.csv", "w") as f:
    f.write("label,youtube_id,time_start,time_end,split\nyoga,qqq,20,30,validate\n")
  val = layouts.read("k400_list", str(tmp_path), "val")
  assert val.class_names == ("archery", "yoga")
  assert val.items[0][:2] == (os.path.join(str(tmp_path), "val", "qqq_000020_000030.mp4"), 1)
  with pytest.raises(UserError, match="no list for split 'test'"):
    layouts.read("k400_list", str(tmp_path), "test")


def test_ssv2_layout(ssv2):
  val = layouts.read("ssv2_json", ssv2, "validation")
  assert [(os.path.basename(p), y) for p, y, _ in val.items] == [("11.webm", 0), ("12.webm", 2)]
  assert val.class_names[1] == "Holding something"


def test_k400_views_read_exact_frames(k400):
  c = _config("k400", k400, num_frames=4, stride=3, temporal_views=3, spatial_views=1)
  batches = list(pipeline.eval_batches(c, "val", process_index=0, process_count=1))
  video = np.concatenate([b["video"] for b in batches])[:3]  # (3 videos, 3 views, 4, 32, 32, 3)
  for clip, n in zip(video, (30, 9, 24)):
    assert [vf.frame_index(view) for view in clip] == sampling.dense_test(n, 4, 3, 3)
  again = np.concatenate([b["video"] for b in pipeline.eval_batches(c, "val", process_index=0, process_count=1)])
  np.testing.assert_array_equal(np.concatenate([b["video"] for b in batches]), again)  # deterministic views
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.tolist() == [True, True, True, False]  # padded to the static batch


def test_ssv2_segment_views_and_training_frames(ssv2):
  c = _config("ssv2", ssv2, num_frames=4, temporal_views=2, spatial_views=3, augment="none")
  [batch] = list(pipeline.eval_batches(c, "validation", process_index=0, process_count=1))
  assert batch["video"].shape == (2, 6, 4, 32, 32, 3)
  for clip, n in zip(batch["video"], (17, 24)):
    expected = sampling.segment_test(n, 4, 0, 2)
    assert [vf.frame_index(v) for v in clip] == [expected[0]] * 3 + [expected[1]] * 3  # temporal-major views
  # Training (ids 13 and 14: 30 and 17 frames, both label 1): one frame inside each of the 4 segments.
  it = pipeline.train_iterator(c, seed=0, process_index=0, process_count=1)
  bounds = {n: [(round((n - 1) / 4 * i), round((n - 1) / 4 * (i + 1))) for i in range(4)] for n in (30, 17)}
  for _ in range(3):
    for clip in next(it)["video"]:
      idx = vf.frame_index(clip)
      assert any(all(lo <= j <= hi for j, (lo, hi) in zip(idx, b)) for b in bounds.values()), idx


def test_dense_training_clip_frames(k400):
  c = _config("k400", k400, num_frames=4, stride=3, augment="none")
  it = pipeline.train_iterator(c, seed=1, process_index=0, process_count=1)
  seen = 0
  for _ in range(3):
    b = next(it)
    for clip, label in zip(b["video"], b["label"]):
      idx = vf.frame_index(clip)
      n = {0: 30, 1: 24, 2: 9}[int(label)]
      if n > 10:
        assert np.diff(idx).tolist() == [3, 3, 3] and 0 <= idx[0] < n - 9
      else:
        assert idx == [0, 3, 6, 6]  # 9 frames < the 10-frame window: 0, 3, 6, then index 9 repeats 6
      seen += 1
  assert seen == 6


def test_resume_equals_uninterrupted(k400):
  c = _config("k400", k400, num_frames=4, stride=3)
  it = pipeline.train_iterator(c, seed=5, process_index=0, process_count=1)
  next(it)
  state = it.get_state()
  rest = [next(it) for _ in range(3)]
  resumed = pipeline.train_iterator(c, seed=5, process_index=0, process_count=1)
  resumed.set_state(state)
  for a, b in zip(rest, [next(resumed) for _ in range(3)]):
    np.testing.assert_array_equal(a["video"], b["video"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_corrupt_video_error_or_counted_skip(tmp_path):
  root = str(tmp_path)
  vf.k400_list(root, {"good": (12, 0), "other": (12, 1)}, split="val")
  with open(os.path.join(root, "videos", "bad.mp4"), "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
  with open(os.path.join(root, "val.txt"), "a") as f:
    f.write("videos/bad.mp4 1\n")
  c = _config("k400", root, num_frames=2, stride=2, temporal_views=1)
  c.dataset.split = "val"
  with pytest.raises(UserError, match=r"bad\.mp4.*val\.txt line 3.*skip_corrupt"):
    list(pipeline.eval_batches(c, "val", process_index=0, process_count=1))
  with pytest.raises(UserError, match=r"bad\.mp4"):
    it = pipeline.train_iterator(c, seed=0, process_index=0, process_count=1)
    for _ in range(3):
      next(it)
  c.video.skip_corrupt = True
  batches = list(pipeline.eval_batches(c, "val", process_index=0, process_count=1))
  skipped = np.concatenate([b["skipped"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert skipped.tolist() == [False, False, True, False] and mask.tolist() == [True, True, False, False]
  task = tasks.get("video")
  import jax.numpy as jnp
  from vit_adapt.train import evaluate, mesh
  totals, notes = {}, {}
  for b in batches:
    evaluate.collect_notes(notes, b)  # the names are host-only: never an array on a device
    sums = task.eval_sums(jnp.zeros((2, 400)), {k: jnp.asarray(v) for k, v in b.items()
                                               if not mesh.is_host_field(v)})
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  summary = evaluate.summarize(task, totals, notes)
  assert summary["num_skipped_videos"] == 1 and summary["num_examples"] == 2
  bad = f"{root}/videos/bad.mp4 ({root}/val.txt line 3)"
  assert summary["notes"] == {"skipped_where": [bad]}
  fields = task.data_fields(c, None, summary)
  assert fields["skipped_videos"]["eval"] == {"split": c.dataset.eval_split, "count": 1, "first": [bad]}
  it = pipeline.train_iterator(c, seed=0, process_index=0, process_count=1)
  labels = [int(y) for _ in range(4) for y in next(it)["label"]]
  assert len(labels) == 8  # the bad video is dropped; the good ones keep coming, never replaced silently


def test_moving_digits_demo():
  a, la = demo.make_clip("train", 7)
  b, lb = demo.make_clip("train", 7)
  np.testing.assert_array_equal(a, b)
  assert la == lb and a.shape == (16, 40, 40, 3) and a.dtype == np.uint8
  labels = {demo.make_clip("test", i)[1] for i in range(300)}
  assert labels <= set(range(40)) and len(labels) > 30
  # The digit moves along its axis: the centre of mass changes from frame to frame.
  ys, xs = np.nonzero(a[0, ..., 0])
  ys2, xs2 = np.nonzero(a[-1, ..., 0])
  assert (ys.mean(), xs.mean()) != (ys2.mean(), xs2.mean())
  c, _ = config_lib.make_config("linear", "task=demo/moving_digits")
  c.video.model = "frames"
  assert pipeline.num_examples(c, "train") == 2048 and pipeline.num_examples(c, "test") == 512
  assert json.dumps(pipeline.class_names(c)[:2]) == '["0 horizontal", "0 vertical"]'


def test_image_model_on_video_dataset_is_named():
  c, _ = config_lib.make_config("linear", "task=demo/moving_digits")
  with pytest.raises(UserError, match="config.video.model='none'"):
    pipeline.train_iterator(c, seed=0, process_index=0, process_count=1)


# ----------------------------------------------------------------------------------------------- skipped training videos

@pytest.fixture(scope="module")
def k400_with_bad_train_video(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("k400_bad"))
  vf.k400_list(root, {"good": (12, 0), "other": (12, 1), "third": (12, 2)}, split="train")
  with open(os.path.join(root, "videos", "bad.mp4"), "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
  with open(os.path.join(root, "train.txt"), "a") as f:
    f.write("videos/bad.mp4 1\n")  # record 3 of 4
  return root


def _expected_skips(seed: int, clips: int) -> int:
  """Occurrences of the bad record (3) in the training order before the `clips`-th good record."""
  import grain
  from vit_adapt.data import pipeline as image_pipeline
  order = image_pipeline.training_order(grain.MapDataset.range(4)[0::1], seed, 0)
  good = bad = k = 0
  while good < clips:
    if order[k] == 3:
      bad += 1
    else:
      good += 1
    k += 1
  return bad


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_skipped_training_videos_counted_across_workers_and_resume(k400_with_bad_train_video, workers):
  if workers:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain's worker processes read its absl flags, as under `main`
      flags.FLAGS.mark_as_parsed()
  c = _config("k400", k400_with_bad_train_video, num_frames=2, stride=2, skip_corrupt=True, num_workers=workers)

  def make():
    return pipeline.train_iterator(c, seed=7, process_index=0, process_count=1)

  it = make()
  first = [next(it) for _ in range(3)]
  assert all(set(b) == {"video", "label"} for b in first)  # the skip fields never reach the model
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint writes (JSON)
  n3 = _expected_skips(7, 3 * 2)
  assert n3 >= 1 and it.summary()["count"] == n3
  root = k400_with_bad_train_video
  assert it.summary()["first"] == [f"{root}/videos/bad.mp4 ({root}/train.txt line 4)"] * min(n3, 10)
  rest = [next(it) for _ in range(5)]
  total = it.summary()
  assert total["count"] == _expected_skips(7, 8 * 2) > n3
  resumed = make()
  resumed.set_state(state)
  assert resumed.summary()["count"] == n3
  again = [next(resumed) for _ in range(5)]
  assert resumed.summary() == total  # continued from the checkpoint: counted once, not again from zero
  fields = tasks.get("video").data_fields(c, resumed, {"num_skipped_videos": 0})
  assert fields["num_skipped_train_videos"] == total["count"]
  assert fields["skipped_videos"]["train"] == {"split": "train", **total}
  for a, b in zip(rest, again):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["video"], b["video"])


def test_all_training_videos_undecodable_is_an_error(tmp_path):
  root = str(tmp_path)
  os.makedirs(os.path.join(root, "videos"))
  for name in ("a", "b"):
    with open(os.path.join(root, "videos", f"{name}.mp4"), "wb") as f:
      f.write(b"not a video" * 20)
  with open(os.path.join(root, "train.txt"), "w") as f:
    f.write("videos/a.mp4 0\nvideos/b.mp4 1\n")
  c = _config("k400", root, num_frames=2, stride=2, skip_corrupt=True)
  with pytest.raises(UserError, match=r"every video of the 'train' split is undecodable"):
    next(pipeline.train_iterator(c, seed=0, process_index=0, process_count=1))


@pytest.mark.slow
def test_skipped_training_videos_in_results_json_and_resume(k400_with_bad_train_video, tmp_path, fast_compile,
                                                            caplog):
  """The training loop writes the count to results.json; a run resumed from a mid-run checkpoint reports the
  same count as the uninterrupted one (the iterator's tally is restored with it, not counted again)."""
  import shutil
  from vit_adapt import train
  c = _config("k400", k400_with_bad_train_video, num_frames=2, stride=2, skip_corrupt=True)
  c.dataset.update(split="train", eval_split="train")
  c.model.update(variant="mu/8", image_size=16, depth=1, init="")
  c.train.update(steps=6, warmup_epochs=0, log_every_steps=1, eval_every_epochs=0, checkpoint_every_steps=3)
  c.efficiency.update(enabled=False, batch_size=2, repeats=1)
  c.video.temporal_views = 1
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(c, workdir)
  expected = _expected_skips(0, 6 * 2)
  assert expected >= 2 and results["num_skipped_train_videos"] == expected
  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  assert on_disk["skipped_videos"]["train"]["count"] == expected
  assert on_disk["skipped_videos"]["eval"]["count"] == on_disk["num_skipped_videos"] == 1
  assert on_disk["skipped_videos"]["eval"]["first"][0].startswith(f"{k400_with_bad_train_video}/videos/bad.mp4")
  # Interrupted after step 3: the last checkpoint and the results gone; the re-run resumes at step 3.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  os.remove(os.path.join(workdir, "results.json"))
  caplog.set_level("INFO")
  resumed = train.train_and_evaluate(c, workdir)
  assert "Resuming the run at step 3 of 6" in caplog.text
  assert resumed["num_skipped_train_videos"] == expected
  assert resumed["skipped_videos"] == on_disk["skipped_videos"]
