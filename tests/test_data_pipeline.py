"""Pipeline behaviour on the embedded digits: resumable training iterators, reproducible augmentation, soft labels,
mixup/cutmix, eval padding, and that the demo data is real (a linear classifier on the pipeline output works)."""

import numpy as np
import orbax.checkpoint as ocp
import grain
import pytest

from vit_adapt import config_lib
from vit_adapt.data import pipeline
from vit_adapt.data import transforms
from vit_adapt.train import optim
from vit_adapt.errors import UserError


def _config(**dataset):
  c, _ = config_lib.make_config("linear", "demo")
  c.model.image_size = 32  # the assertions below are written for 32 px (the demo itself runs at 16 px)
  c.train.batch_size = 16
  c.dataset.num_threads = 2
  c.dataset.update(dataset)
  return c


def _train(config, seed=0):
  return pipeline.train_iterator(config, seed=seed, process_index=0, process_count=1)


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dataset", [{}, {"augment": "inception_crop", "mixup": 0.8, "cutmix": 1.0,
                                           "label_smoothing": 0.1}])
def test_resume_from_orbax_checkpoint_yields_the_uninterrupted_batches(tmp_path, dataset):
  config = _config(**dataset)
  reference = _train(config)
  expected = [next(reference) for _ in range(100)]  # crosses epoch boundaries (1437 // 16 = 89 per epoch)

  it = _train(config)
  for _ in range(90):
    next(it)
  mngr = ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(create=True))
  mngr.save(90, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()

  restored = _train(config)
  next(restored)  # a different position, to be overwritten by the restore
  mngr.restore(90, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  for want in expected[90:]:
    assert _equal(next(restored), want)
  # get_state / set_state round trip as well.
  state = restored.get_state()
  again = _train(config)
  again.set_state(state)
  assert _equal(next(again), next(restored))


@pytest.mark.parametrize("augment", ["none", "flip"])
def test_in_memory_cache_changes_nothing_but_speed(augment, monkeypatch):
  cached, uncached = _train(_config(augment=augment)), _train(_config(augment=augment, cache_mb=0))
  assert all(_equal(next(cached), next(uncached)) for _ in range(95))  # past the first epoch (89 batches)
  reads = []
  original = pipeline._LazyCache.__init__
  monkeypatch.setattr(pipeline._LazyCache, "__init__", lambda self, ds: reads.append(len(ds)) or original(self, ds))
  _train(_config(augment=augment))
  _train(_config(augment=augment, cache_mb=0))
  _train(_config(augment="inception_crop"))  # random crops of the full image: nothing deterministic to keep
  assert reads == [1437]


def test_seeds_reproduce_and_differ():
  config = _config(augment="inception_crop")
  a, b, c = _train(config, 1), _train(config, 1), _train(config, 2)
  first = [next(a) for _ in range(3)]
  assert all(_equal(x, next(b)) for x in first)
  assert not _equal(first[0], next(c))


def test_epochs_are_reshuffled_permutations():
  config = _config()
  config.train.batch_size = 479  # 1437 = 3 * 479: epochs align with batches
  it = _train(config)
  epochs = [np.concatenate([next(it)["label"] for _ in range(3)]) for _ in range(2)]
  counts = np.bincount(epochs[0], minlength=10)
  assert counts.sum() == 1437 and (np.bincount(epochs[1], minlength=10) == counts).all()
  assert not np.array_equal(epochs[0], epochs[1])


def test_label_smoothing_soft_labels():
  batch = next(_train(_config(label_smoothing=0.1)))
  soft = batch["soft_label"]
  assert soft.shape == (16, 10) and soft.dtype == np.float32
  np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(soft[np.arange(16), batch["label"]], 0.9 + 0.01, rtol=1e-6)
  assert np.isclose(soft, 0.01).sum() == 16 * 9


def test_mixup_mixes_images_and_labels_with_the_reversed_batch():
  plain = next(_train(_config()))
  mixed = next(_train(_config(mixup=0.5)))
  # Per-record randomness does not depend on the batch transform: the same examples, then mixed.
  assert np.array_equal(plain["label"], mixed["label"])
  one_hot = np.eye(10, dtype=np.float32)[plain["label"]]
  i = np.nonzero(plain["label"] != plain["label"][::-1])[0][0]
  lam = mixed["soft_label"][i, plain["label"][i]]
  np.testing.assert_allclose(mixed["soft_label"], lam * one_hot + (1 - lam) * one_hot[::-1], atol=1e-6)
  np.testing.assert_allclose(mixed["image"], lam * plain["image"] + (1 - lam) * plain["image"][::-1], atol=1e-5)
  assert 0 < lam < 1


def test_cutmix_pastes_a_box_and_weights_labels_by_its_area():
  b, size = 6, 20
  plain = np.broadcast_to(np.linspace(-1, 1, b, dtype=np.float32)[:, None, None, None], (b, size, size, 3))
  batch = {"image": plain, "label": np.arange(b, dtype=np.int32)}
  cutmix = transforms.BatchTransform(num_classes=10, cutmix=1.0)
  one_hot = np.eye(10, dtype=np.float32)[np.arange(b)]
  for seed in range(20):
    out = cutmix(batch, np.random.default_rng(seed))
    pasted = out["image"] == plain[::-1]
    assert (pasted | (out["image"] == plain)).all()  # every pixel comes from the example or its partner
    box = pasted[0, :, :, 0]
    assert (pasted == box[None, :, :, None]).all()  # one box for the whole batch
    ys, xs = np.nonzero(box)
    if len(ys):
      assert box[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all() and box.sum() == len(ys)
    lam = 1 - box.mean()
    np.testing.assert_allclose(out["soft_label"], lam * one_hot + (1 - lam) * one_hot[::-1], atol=1e-6)


def test_inception_crop_box_follows_random_resized_crop():
  rng = np.random.default_rng(0)
  for h, w in [(100, 200), (64, 64), (300, 90)]:
    for _ in range(300):
      top, left, ch, cw = transforms.inception_crop_box(h, w, rng)
      assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
      assert ch * cw <= h * w
  # A 1x20 strip cannot hold a 3/4..4/3 crop: the fallback is the central crop with the ratio clamped.
  assert transforms.inception_crop_box(1, 20, rng) == (0, 9, 1, 1)


def test_eval_transform_after_crop_training_is_resize_and_centre_crop():
  image = np.zeros((256, 512, 3), np.uint8)
  image[:, 128:384] = 255  # the central square is white
  out = transforms.EvalTransform(224, "inception_crop")({"image": image, "label": 0})["image"]
  assert out.shape == (224, 224, 3) and out.min() >= 250  # resized to 256x512, centre 224 crop: all white
  out = transforms.EvalTransform(224, "none")({"image": image, "label": 0})["image"]
  assert out.shape == (224, 224, 3) and out[:, :20].max() <= 5  # whole-image resize keeps the black margins


@pytest.mark.parametrize("batch_size", [64, 7, 360, 1000])
def test_eval_padding_counts_each_example_once(batch_size):
  config = _config()
  batches = list(pipeline.eval_batches(config, batch_size=batch_size, process_index=0, process_count=1))
  assert len(batches) == -(-360 // batch_size)
  assert all(b["image"].shape == (batch_size, 32, 32, 3) and b["mask"].dtype == bool for b in batches)
  assert sum(int(b["mask"].sum()) for b in batches) == 360
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks[:360].all() and not masks[360:].any()
  again = list(pipeline.eval_batches(config, batch_size=batch_size, process_index=0, process_count=1))
  assert all(_equal(a, b) for a, b in zip(batches, again))  # deterministic order


def test_sizes_and_steps():
  config = _config()
  assert pipeline.num_examples(config) == 1437 and pipeline.num_examples(config, "test") == 360
  assert optim.schedule_lengths(config, pipeline.num_examples(config))[0] == 1437 // 16
  config.train.keep_last_partial = True
  assert optim.schedule_lengths(config, pipeline.num_examples(config))[0] == 1437 // 16 + 1


@pytest.mark.filterwarnings("ignore:self.within_class_std_dev_")  # constant border pixels: harmless
def test_demo_digits_are_real_images():
  """A nearest-centroid classifier on the pipeline's 32x32 RGB output must classify held-out digits well
  (random or mislabelled images would give ~10%)."""
  from sklearn.neighbors import NearestCentroid

  config = _config()

  def arrays(split):
    batches = list(pipeline.eval_batches(config, split, batch_size=500, process_index=0, process_count=1))
    x = np.concatenate([b["image"][b["mask"]] for b in batches])
    return x.reshape(len(x), -1), np.concatenate([b["label"][b["mask"]] for b in batches])

  x_train, y_train = arrays("train")
  x_test, y_test = arrays("test")
  assert len(x_train) == 1437 and len(x_test) == 360 and set(y_test.tolist()) == set(range(10))
  accuracy = NearestCentroid().fit(x_train, y_train).score(x_test, y_test)
  assert accuracy > 0.85, accuracy


def test_bad_options_are_user_errors():
  with pytest.raises(UserError, match="augment"):
    _train(_config(augment="randaug"))
  with pytest.raises(UserError, match="normalization"):
    _train(_config(normalization="zscore"))
  with pytest.raises(UserError, match="no split 'train800'"):
    _train(_config(split="train800"))
  config = _config()
  config.train.batch_size = 10
  with pytest.raises(UserError, match="multiple of the number of hosts"):
    pipeline.train_iterator(config, seed=0, process_index=0, process_count=4)
  with pytest.raises(UserError, match="source"):
    config = _config()
    config.dataset.name = "vtab/dtd"
    config.dataset.update(source="demo", split="train800val200")
    pipeline.num_examples(config)


def test_imagenet_normalization():
  batch = next(iter(pipeline.eval_batches(_config(normalization="imagenet"), batch_size=8, process_index=0,
                                          process_count=1)))
  # Background pixels are 0: (0 - mean) / std per channel.
  assert (batch["image"].max(axis=(0, 1, 2)) > 0).all()
  np.testing.assert_allclose(batch["image"].min(axis=(0, 1, 2)),
                             -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225]), rtol=1e-5)
