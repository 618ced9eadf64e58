"""SynQT cached-feature training: same batches, same loss curve, resumable, invalidated, refused when too big."""


import jax
import numpy as np
import pytest

from vit_adapt import config_lib, methods
from vit_adapt.train import optim
from vit_adapt.train import step as train_state
from vit_adapt.data import pipeline
from vit_adapt.errors import UserError
from vit_adapt.methods.synqt import cache as synqt_cache


def _config(**method):
  c, _ = config_lib.make_config("synqt", "demo")
  c.model.update(variant="mu/8", image_size=32, depth=2, drop_path=0.1)
  c.train.update(batch_size=16, steps=4, warmup_epochs=0)
  c.dataset.update(num_threads=2, prefetch=2, label_smoothing=0.1)
  c.method.update({**dict(num_queries=2, cache_features="kv", cache_dtype="float32", image_drop_path=False),
                   **method})
  return c


def _setup(config):
  model, method = methods.build_model(config)
  variables = methods.init_variables(model, method, config)
  return model, method, variables


def _train(config, model, method, variables, iterator, steps):
  trainable, frozen = optim.split_trainable(variables["params"], method, config.optim)
  tx, schedule = optim.make_optimizer(config.optim, trainable, steps, 0)
  state = train_state.create(trainable, {}, tx, config.seed)
  step = jax.jit(train_state.make_train_step(model, method, config, tx, schedule))
  losses = []
  for _ in range(steps):
    state, m = step(state, frozen, dict(next(iterator)))  # the step feeds 'features' in place of 'image'

    losses.append(float(m["loss"]))
  return np.array(losses)


@pytest.mark.usefixtures("fast_compile")
def test_cached_training_matches_uncached_training(tmp_path, capsys):
  config = _config()
  model, method, variables = _setup(config)
  cached = method.feature_cache.iterator(config, str(tmp_path), model, variables)
  out = capsys.readouterr().out
  assert "SynQT feature cache (kv, float32)" in out and "GiB" in out
  n = pipeline.num_examples(config, config.dataset.split)
  assert f"{n} examples computed, 0 reused" in out
  # The same examples in the same order as the image pipeline, and features = the image path's output.
  images = pipeline.train_iterator(config, seed=config.seed)
  b_img, b_feat = next(images), next(cached)
  np.testing.assert_array_equal(b_feat["label"], b_img["label"])
  np.testing.assert_allclose(b_feat["soft_label"], b_img["soft_label"], rtol=1e-6)
  feats = model.apply(variables, b_img["image"], "kv", method="image_features")["kv"]
  np.testing.assert_allclose(b_feat["features"], feats, rtol=1e-5, atol=1e-5)
  # The same loss curve (dropout and query-path drop-path on, same RNG; the image path is deterministic).
  uncached = _train(config, model, method, variables, pipeline.train_iterator(config, seed=config.seed), 4)
  with_cache = _train(config, model, method, variables,
                      method.feature_cache.iterator(config, str(tmp_path), model, variables), 4)
  assert len(set(np.round(uncached, 4))) > 1
  np.testing.assert_allclose(with_cache, uncached, rtol=2e-5)
  # Reused on the second call: nothing recomputed.
  assert f"0 examples computed, {n} reused" in capsys.readouterr().out


@pytest.mark.usefixtures("fast_compile")
def test_fingerprint_changes_with_backbone_and_image_size():
  config = _config()
  model, method, variables = _setup(config)
  fp = synqt_cache.fingerprint(config, model, variables["params"], method.trainable, 0, 1)
  # Trainable parameters do not matter (the image path does not read them) ...
  params = dict(variables["params"], head=jax.tree_util.tree_map(lambda a: a + 1, variables["params"]["head"]))
  assert synqt_cache.fingerprint(config, model, params, method.trainable, 0, 1) == fp
  # ... the backbone weights, the image size and the storage options do.
  frozen_changed = dict(variables["params"], cls=variables["params"]["cls"] + 1e-3)
  assert synqt_cache.fingerprint(config, model, frozen_changed, method.trainable, 0, 1) != fp
  big = _config()
  big.model.image_size = 40
  m3, _ = methods.build_model(big)
  assert synqt_cache.fingerprint(big, m3, variables["params"], method.trainable, 0, 1) != fp
  bf16 = _config(cache_dtype="bfloat16")
  assert synqt_cache.fingerprint(bf16, model, variables["params"], method.trainable, 0, 1) != fp
  assert synqt_cache.fingerprint(config, model, variables["params"], method.trainable, 1, 2) != fp


def _batches(seed=0, n=5, b=4):
  rng = np.random.default_rng(seed)
  out = []
  for j in range(n):
    mask = np.ones(b, bool)
    if j == n - 1:
      mask[2:] = False  # padded last batch
    out.append({"image": rng.standard_normal((b, 3), np.float32), "label": rng.integers(0, 9, b), "mask": mask})
  return out


def test_build_is_resumable_and_recomputes_from_the_first_changed_batch(tmp_path):
  compute = lambda x: np.repeat(x[:, None, :], 2, axis=1) * 2.0  # (b, 2, 3) stand-in features
  cache = synqt_cache.FeatureCache(str(tmp_path / "c"), 18, (2, 3), "bfloat16")
  batches = _batches()
  calls = []

  def failing(x):
    if len(calls) == 2:
      raise KeyboardInterrupt  # interrupted after two committed batches
    calls.append(1)
    return compute(x)

  with pytest.raises(KeyboardInterrupt):
    cache.build(batches, failing)
  assert cache.build(batches, compute) == {"computed": 10, "reused": 8}
  assert cache.build(batches, compute) == {"computed": 0, "reused": 18}
  changed = [dict(b) for b in batches]
  changed[3]["image"] = changed[3]["image"] + 1.0
  assert cache.build(changed, compute) == {"computed": 6, "reused": 12}
  src = cache.source()
  assert len(src) == 18
  want = compute(np.concatenate([b["image"][b["mask"]] for b in changed]))
  got = np.stack([src[i]["features"] for i in range(18)]).astype(np.float32)
  np.testing.assert_allclose(got, want, rtol=1e-2)  # bfloat16 storage
  assert [int(src[i]["label"]) for i in range(18)] == list(np.concatenate([b["label"][b["mask"]] for b in changed]))


def test_refuses_a_cache_that_does_not_fit(tmp_path, monkeypatch):
  cache = synqt_cache.FeatureCache(str(tmp_path / "c"), 10 ** 6, (12, 2, 197, 768), "bfloat16")
  with pytest.raises(UserError, match="GiB free"):
    cache.build(_batches(), lambda x: x)


def test_refuses_augmented_data():
  config = _config()
  config.dataset.augment = "flip"
  with pytest.raises(UserError, match="augment"):
    synqt_cache.check_cacheable(config)
