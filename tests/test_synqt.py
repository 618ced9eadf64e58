"""SynQT model: parameters, the frozen image path (never back-propagated, never seeing the queries), features."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_adapt.efficiency import measure as efficiency_lib
from vit_adapt.methods import base
from vit_adapt.methods import synqt
from vit_adapt.methods import adapter as adapter_method
from vit_adapt.models import vit

# A small backbone with enough image tokens (65) that the query path (T tokens) is cheap next to the image path.
SMALL = dict(num_classes=7, width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=4, image_size=32, drop_path=0.1)


def _model(**kw):
  c = synqt.defaults()
  c.num_queries = kw.pop("num_queries", 2)
  c.cache_features = kw.pop("cache_features", "")
  args = {**SMALL, **kw}
  return synqt.SynQTViT(**args, **synqt.model_kwargs(c, args))


@functools.lru_cache(maxsize=None)
def _init_cached(model, seed):
  x = jnp.zeros((1, model.image_size, model.image_size, 3))
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), x)["params"]
  # Non-trivial frozen weights and trainable scales so every term matters (numpy: no per-shape compiles).
  rng = np.random.default_rng(seed + 1)
  return jax.tree_util.tree_map(lambda a: np.asarray(a) + 0.05 * rng.standard_normal(a.shape, np.float32), params)


def _init(model, seed=0):
  return _init_cached(model, seed)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("method", "train"))
def _apply(model, params, x, method=None, train=False, rng=None):
  kw = {"rngs": {"dropout": rng}} if train else {}
  if method is None:
    return model.apply({"params": params}, x, train=train, **kw)
  return model.apply({"params": params}, x, method=method)


def _images(n=4, size=32, seed=3):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, 3))


@pytest.mark.usefixtures("fast_compile")
def test_trainable_tree_and_official_parameter_count():
  for t, c in ((1, 100), (16, 2)):
    cfg = synqt.defaults()
    cfg.num_queries = t
    m = synqt.SynQTViT(num_classes=c, **synqt.model_kwargs(cfg, {}))
    params = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))["params"]
    trainable, frozen = base.split_params(params, synqt.SYNQT.trainable)
    assert set(trainable) == {"qsm", "synqt_head", "head"}
    assert "qsm" not in frozen and "synqt_head" not in frozen and "head" not in frozen
    # The official log line minus the 18,469 values of its two unused tensors (spec, section 3).
    assert vit.count_params(trainable) == 2_622_866 + 9_216 * (t - 1) + 769 * c - 18_469
    assert vit.count_params(frozen) == 85_798_656  # ViT-B/16 without its head


@pytest.mark.usefixtures("fast_compile")
def test_post_load_copies_the_backbone_final_norm_into_head_norm():
  m = _model()
  params = _init(m)
  out = synqt.post_load(params, None)
  np.testing.assert_array_equal(out["synqt_head"]["head_norm"]["scale"],
                                params["Transformer"]["encoder_norm"]["scale"])
  np.testing.assert_array_equal(out["synqt_head"]["head_norm"]["bias"], params["Transformer"]["encoder_norm"]["bias"])


@pytest.mark.usefixtures("fast_compile")
def test_image_stream_is_the_plain_vit_forward_and_ignores_the_queries():
  m = _model()
  params = _init(m)
  x = _images()
  hidden = _apply(m.clone(feature_kind="hidden"), params, x, method="image_features")["hidden"]
  plain = vit.VisionTransformer(**{k: v for k, v in SMALL.items()})
  plain_params = {k: v for k, v in params.items() if k not in ("qsm", "synqt_head")}
  _, out = _apply(plain, plain_params, x)
  for i in range(1, SMALL["depth"]):
    np.testing.assert_allclose(hidden[:, i], out[f"block_{i - 1}"], rtol=1e-6, atol=1e-6)
  # Different queries and QSM weights: the same image features.
  params2 = dict(params, qsm=jax.tree_util.tree_map(lambda a: a * 3.0 + 1.0, params["qsm"]))
  kv1 = _apply(m, params, x, method="image_features")["kv"]
  kv2 = _apply(m, params2, x, method="image_features")["kv"]
  np.testing.assert_array_equal(kv1, kv2)
  # ... while the logits do depend on them (the queries are live).
  l1, _ = _apply(m, params, x)
  l2, _ = _apply(m, params2, x)
  assert np.abs(np.asarray(l1 - l2)).max() > 1e-3


@pytest.mark.parametrize("kind", ["kv", "hidden"])
@pytest.mark.usefixtures("fast_compile")
def test_features_in_give_the_same_logits_as_images_in(kind):
  m = _model(cache_features=kind)
  params = _init(m)
  x = _images()
  feats = _apply(m, params, x, method="image_features")
  assert set(feats) == {kind}
  l_img, _ = _apply(m, params, x)
  # Flat arrays (what a cached batch holds) are recognised by their shape.
  l_feat, _ = _apply(m, params, feats[kind])
  np.testing.assert_allclose(l_feat, l_img, rtol=1e-5, atol=1e-5)
  # In training mode too (image-path stochastic depth off, same RNG): identical outputs.
  m_nodp = m.clone(image_drop_path=False)
  rng = jax.random.PRNGKey(7)
  t_img, _ = _apply(m_nodp, params, x, train=True, rng=rng)
  t_feat, _ = _apply(m_nodp, params, feats[kind], train=True, rng=rng)
  np.testing.assert_allclose(t_feat, t_img, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("fast_compile")
def test_training_is_stochastic_and_evaluation_deterministic():
  m = _model()
  params = _init(m)
  x = _images()
  e1, _ = _apply(m, params, x)
  e2, _ = _apply(m, params, np.asarray(x))
  np.testing.assert_array_equal(e1, e2)
  t1, _ = _apply(m, params, x, train=True, rng=jax.random.PRNGKey(1))
  t2, _ = _apply(m, params, x, train=True, rng=jax.random.PRNGKey(2))
  assert np.abs(np.asarray(t1 - t2)).max() > 1e-4


@jax.custom_vjp
def _tripwire(x):
  return x


def _tripwire_fwd(x):
  return x, None


def _tripwire_bwd(_, g):
  raise AssertionError("a gradient reached the image-token path")


_tripwire.defvjp(_tripwire_fwd, _tripwire_bwd)


def _loss(model, trainable, frozen, images, labels, rng):
  params = base.merge_params(trainable, frozen)
  logits, _ = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
  return jnp.mean(optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1])))


@pytest.mark.usefixtures("fast_compile")
def test_no_gradient_flows_into_the_image_path():
  m = _model()
  trainable, frozen = base.split_params(_init(m), synqt.SYNQT.trainable)
  x, y, rng = _images(), jnp.arange(4) % 7, jax.random.PRNGKey(0)
  # Differentiating w.r.t. the images as well: the backward pass must never enter the image path (the
  # tripwire's VJP raises if any cotangent reaches it), and the image gradient is exactly zero.
  loss = lambda t, img: _loss(m, t, frozen, _tripwire(img), y, rng)
  g_train, g_img = jax.jit(jax.grad(loss, argnums=(0, 1)))(trainable, x)
  assert float(jnp.abs(g_img).max()) == 0.0
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(g_train["qsm"]["layer_0"]))
  # The same tripwire trips on a method that back-propagates through the backbone (the test can fail).
  am = vit.VisionTransformer(**SMALL, block_cls=adapter_method.AdapterBlock)
  a_params = jax.jit(am.init)(jax.random.PRNGKey(0), x)["params"]
  a_train, a_frozen = base.split_params(a_params, adapter_method.ADAPTER.trainable)
  with pytest.raises(AssertionError, match="image-token path"):
    jax.jit(jax.grad(lambda t, img: _loss(am, t, a_frozen, _tripwire(img), y, rng), argnums=(0, 1)))(a_train, x)


def _grad_to_forward_macs(model, method, params, x, y):
  trainable, frozen = base.split_params(params, method.trainable)
  rng = jax.random.PRNGKey(0)
  fwd = efficiency_lib.lowered_macs(lambda t: _loss(model, t, frozen, x, y, rng), trainable)
  grad = efficiency_lib.lowered_macs(jax.value_and_grad(lambda t: _loss(model, t, frozen, x, y, rng)), trainable)
  return grad / fwd


def test_training_step_compute_is_a_forward_plus_the_query_path_backward():
  """No backward through the backbone: the value-and-grad program costs ~1 forward (a back-propagating
  method costs ~2-3 forwards). Counted from the compiled HLO, not timed."""
  x, y = _images(8), jnp.arange(8) % 7
  m = _model()
  ratio = _grad_to_forward_macs(m, synqt.SYNQT, _init(m), x, y)
  assert ratio < 1.25, ratio
  am = vit.VisionTransformer(**SMALL, block_cls=adapter_method.AdapterBlock)
  a_ratio = _grad_to_forward_macs(am, adapter_method.ADAPTER, jax.jit(am.init)(jax.random.PRNGKey(0), x)["params"],
                                  x, y)
  assert a_ratio > 1.8, a_ratio


@pytest.mark.usefixtures("fast_compile")
def test_model_kwargs_reject_bad_settings():
  from vit_adapt.errors import UserError
  c = synqt.defaults()
  c.num_queries = 0
  with pytest.raises(UserError, match="num_queries"):
    synqt.model_kwargs(c, {})
  c = synqt.defaults()
  c.cache_features = "keys"
  with pytest.raises(UserError, match="cache_features"):
    synqt.model_kwargs(c, {})
