"""DyT: exact threshold inference, routing invariants, straight-through gradients, loss, variants, MoE adapter."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vit_adapt.tasks import classification
from vit_adapt.methods import base
from vit_adapt.methods import dyt
from vit_adapt.models import vit
from vit_adapt.models.adapters import Adapter

RNGS = lambda s: {"params": jax.random.PRNGKey(s), "dropout": jax.random.PRNGKey(s + 1),
                  "gumbel": jax.random.PRNGKey(s + 2)}


def make(num_classes=10, image_size=32, depth=2, **method):
  c = dyt.defaults()
  c.update(method)
  mc = ml_collections.ConfigDict(dict(variant="mu/8", image_size=image_size, depth=depth, dtype="float32",
                                      pool="tok", dropout=0.0, drop_path=0.0, head_init_std=0.01))
  kw = vit.backbone_kwargs(mc, num_classes)
  kw.update(dyt.model_kwargs(c, kw))
  return dyt.DyTVisionTransformer(**kw), c


def images(b=4, size=32, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (b, size, size, 3))


def perturbed_params(model, x, seed=0, router_bias=0.0):
  """Random params with non-zero adapters (their up-projection starts at 0) and a given router bias."""
  params = model.init(RNGS(seed), x)["params"]
  flat = base.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 10), len(flat))
  for k, (path, v) in zip(keys, sorted(flat.items())):
    if "/adapter/" in path:
      flat[path] = v + 0.1 * jax.random.normal(k, v.shape)
    if path.endswith("router/kernel"):
      flat[path] = v * 5.0  # spread the logits so masks are mixed
    if path.endswith("router/bias"):
      flat[path] = jnp.full_like(v, router_bias)
  return base.unflatten(flat)


VARIANTS = [("mlp", "selected"), ("attention", "selected"), ("attention", "all"), ("attention_mlp", "selected"),
            ("attention_mlp", "all"), ("layer", "selected")]


@pytest.mark.parametrize("dispatch,keys", VARIANTS)
def test_threshold_equals_masked(dispatch, keys):
  x = images()
  masked, _ = make(dispatch=dispatch, inference="masked", attention_keys=keys)
  thresh, _ = make(dispatch=dispatch, inference="threshold", attention_keys=keys)
  params = perturbed_params(masked, x)
  lm, om = jax.jit(masked.apply)({"params": params}, x)
  lt, ot = jax.jit(thresh.apply)({"params": params}, x)
  rate = float(jnp.mean(om["dyt_masks"]))
  assert 0.2 < rate < 0.8, rate  # the comparison is meaningful only with mixed masks
  np.testing.assert_array_equal(om["dyt_masks"], ot["dyt_masks"])
  np.testing.assert_allclose(lt, lm, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ot["gmacs"], om["gmacs"], rtol=1e-6)


@pytest.mark.parametrize("dispatch", ["mlp", "layer"])
def test_threshold_computes_only_its_bucket(dispatch):
  """The dispatched MLP runs on the active rows plus at most one fine bucket step (8 rows), never on all rows."""
  x = images(b=8)
  model, _ = make(dispatch=dispatch, inference="threshold")
  params = perturbed_params(model, x, router_bias=-1.0)
  _, out = jax.jit(model.apply)({"params": params}, x)
  active = np.asarray(out["dyt_tokens"]).sum(axis=0)  # (depth,) active rows of the whole batch, class included
  rows = np.asarray(out["dyt_rows"])
  total = x.shape[0] * (1 + (32 // 8) ** 2)
  assert np.all(active < total // 2), active
  assert np.all(rows >= active) and np.all(rows <= active + 8), (rows, active)


def test_capacity_mode_keeps_topk_per_image():
  x = images()
  model, c = make(inference="capacity", capacity_rate=0.25)
  params = perturbed_params(model, x)
  _, out = jax.jit(model.apply)({"params": params}, x)
  masks, logits = np.asarray(out["dyt_masks"]), np.asarray(out["dyt_logits"])
  assert np.all(masks.sum(-1) == 4)  # 0.25 of 16 patch tokens, in every image and layer
  kth = np.sort(logits, axis=-1)[..., -4]
  np.testing.assert_array_equal(masks, (logits >= kth[..., None]).astype(np.float32))
  np.testing.assert_allclose(out["activation_rate"], 0.25)


@pytest.mark.parametrize("dispatch,keys", VARIANTS)
def test_capacity_equals_masked_on_its_mask(dispatch, keys, monkeypatch):
  """The capacity path computes exactly what the masked path computes when given the capacity path's (top-k) masks."""
  x = images()
  cap, _ = make(dispatch=dispatch, inference="capacity", capacity_rate=0.5, attention_keys=keys)
  params = perturbed_params(cap, x)
  lc, oc = jax.jit(cap.apply)({"params": params}, x)
  masks = oc["dyt_masks"]  # (B, depth, N-1)

  def route(self, stream, train):  # block i of the masked model uses the capacity path's mask of block i
    m = masks[:, int(self.name.split("_")[-1])]
    return jnp.where(m > 0.5, 1.0, -1.0), m

  masked, _ = make(dispatch=dispatch, inference="masked", attention_keys=keys)
  monkeypatch.setattr(dyt.DyTBlock, "route", route)
  lm, om = masked.apply({"params": params}, x)
  np.testing.assert_allclose(lc, lm, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(oc["gmacs"], om["gmacs"], rtol=1e-6)


@pytest.mark.parametrize("dispatch", ["attention", "attention_mlp"])
def test_attention_keys_setting_matters(dispatch):
  """'selected' (skipped tokens are no keys/values) and 'all' differ on mixed masks; at full activation (the
  complete pass) they agree."""
  x = images()
  sel, _ = make(dispatch=dispatch, inference="masked", attention_keys="selected")
  alk, _ = make(dispatch=dispatch, inference="masked", attention_keys="all")
  params = perturbed_params(sel, x)
  ls, os_ = sel.apply({"params": params}, x)
  la, oa = alk.apply({"params": params}, x)
  np.testing.assert_array_equal(os_["dyt_masks"][:, 0], oa["dyt_masks"][:, 0])
  assert not np.allclose(ls, la, atol=1e-4)
  assert np.all(np.asarray(os_["gmacs"]) <= np.asarray(oa["gmacs"]))
  cs, _ = sel.apply({"params": params}, x, complete=True)
  ca, _ = alk.apply({"params": params}, x, complete=True)
  np.testing.assert_allclose(cs, ca, rtol=1e-5, atol=1e-5)


def test_head_init_is_timm_trunc_normal():
  """The head init is timm's trunc_normal_(std): std = the given std (flax's would give ~0.88 std), bounds +-2."""
  k = vit.timm_trunc_normal(0.01)(jax.random.PRNGKey(0), (768, 1000))
  assert abs(float(jnp.std(k)) - 0.01) < 2e-4, float(jnp.std(k))
  assert float(jnp.abs(k).max()) <= 2.0
  big = vit.timm_trunc_normal(1.0)(jax.random.PRNGKey(1), (512, 512))  # bounds bite at std 1: |k| <= 2 absolute
  assert float(jnp.abs(big).max()) <= 2.0 and float(jnp.abs(big).max()) > 1.9
  model, _ = make(num_classes=1000)
  head = model.init(RNGS(0), images(b=1))["params"]["head"]
  assert abs(float(jnp.std(head["kernel"])) - 0.01) < 5e-4 and float(jnp.abs(head["bias"]).max()) == 0.0


def test_class_token_never_dropped():
  """With every patch token switched off, the class token still goes through the MLP (equals the dense block)."""
  x = images()
  model, _ = make(inference="threshold")
  params = perturbed_params(model, x, router_bias=-1e4)
  _, out = jax.jit(model.apply)({"params": params}, x)
  assert float(out["dyt_masks"].max()) == 0.0
  np.testing.assert_array_equal(out["dyt_tokens"], 1)
  _, dense = jax.jit(functools.partial(model.apply, complete=True))({"params": params}, x)
  np.testing.assert_allclose(out["block_0"][:, 0], dense["block_0"][:, 0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(out["block_0"][:, 1:], dense["block_0"][:, 1:], atol=1e-3)
  # Training masks never include the class token either: masks cover patch tokens only.
  _, tr = model.apply({"params": params}, x, train=True, rngs=RNGS(5))
  assert tr["dyt_masks"].shape == (4, 2, 16)


def test_gumbel_sigmoid_straight_through():
  logits = jnp.linspace(-3, 3, 4096)
  m = dyt.gumbel_sigmoid_st(logits, jax.random.PRNGKey(0), 5.0)
  np.testing.assert_allclose(np.minimum(np.abs(m), np.abs(m - 1)), 0.0, atol=1e-6)  # hard values
  # P(m = 1) = sigmoid(s): compare the empirical rate in the two halves.
  np.testing.assert_allclose(jnp.mean(m), jnp.mean(jax.nn.sigmoid(logits)), atol=0.03)
  g = jax.grad(lambda s: jnp.sum(dyt.gumbel_sigmoid_st(s, jax.random.PRNGKey(0), 5.0)))(logits)
  assert np.all(np.asarray(g) > 0) and np.all(np.asarray(g) <= 0.25 / 5.0 + 1e-6)


def _loss_fn(model, cfg, trainable, frozen, x, labels, rng):
  params = base.merge_params(trainable, frozen)
  rngs = {"dropout": rng, "gumbel": jax.random.fold_in(rng, 1)}
  fwd = lambda **kw: model.apply({"params": params}, x, train=True, rngs=rngs, **kw)
  logits, out = fwd()
  return dyt.loss(base.LossInputs(logits, out, labels, fwd, cfg, True,
                                  task_loss=lambda lg: classification.loss(lg, labels)))


def test_straight_through_gradients_reach_router():
  x = images()
  model, cfg = make()
  params = perturbed_params(model, x)
  trainable, frozen = base.split_params(params, dyt.DYT.trainable)
  labels = jax.nn.one_hot(jnp.arange(4) % 10, 10)
  grads, _ = jax.grad(lambda t: _loss_fn(model, cfg, t, frozen, x, labels, jax.random.PRNGKey(3)),
                      has_aux=True)(trainable)
  flat = base.flatten(grads)
  assert {p for p in flat if "router" in p} == {f"Transformer/encoderblock_{i}/router/{n}"
                                                for i in range(2) for n in ("kernel", "bias")}
  for path, g in flat.items():
    assert np.all(np.isfinite(g)), path
    if "router" in path or "adapter" in path or path.startswith("head"):
      assert float(jnp.abs(g).sum()) > 0, path
  # Only adapters, routers and the head train.
  assert all(("/adapter/" in p) or ("/router/" in p) or p.startswith("head/") for p in flat)


def test_loss_terms():
  x = images()
  model, cfg = make()
  params = perturbed_params(model, x)
  trainable, frozen = base.split_params(params, dyt.DYT.trainable)
  labels = jax.nn.one_hot(jnp.arange(4) % 10, 10)
  total, m = _loss_fn(model, cfg, trainable, frozen, x, labels, jax.random.PRNGKey(3))
  want = m["ce"] + 2.0 * (m["activation_rate"] - 0.5) ** 2 + m["complete_ce"] + m["distill_kl"]
  np.testing.assert_allclose(total, want, rtol=1e-6)
  assert float(m["distill_kl"]) >= 0.0
  cfg2 = cfg.copy_and_resolve_references()
  cfg2.complete_pass = False
  total2, m2 = _loss_fn(model, cfg2, trainable, frozen, x, labels, jax.random.PRNGKey(3))
  assert "complete_ce" not in m2
  np.testing.assert_allclose(total2, m2["ce"] + 2.0 * m2["rate_loss"], rtol=1e-6)


@pytest.mark.parametrize("dispatch,experts", [(d, 1) for d in dyt.DISPATCHES] + [("mlp", 3)])
def test_every_variant_trains(dispatch, experts):
  x = images(b=8)
  labels = jax.nn.one_hot(jnp.arange(8) % 10, 10)
  model, cfg = make(dispatch=dispatch, num_experts=experts, depth=1)
  params = model.init(RNGS(0), x)["params"]
  trainable, frozen = base.split_params(params, dyt.DYT.trainable)
  opt = optax.adamw(1e-2)
  state = opt.init(trainable)

  @jax.jit
  def step(trainable, state, rng):
    (l, m), g = jax.value_and_grad(_loss_fn, argnums=2, has_aux=True)(model, cfg, trainable, frozen, x, labels,
                                                                       rng)
    upd, state = opt.update(g, state, trainable)
    return optax.apply_updates(trainable, upd), state, l

  losses = []
  t = trainable
  for i in range(3):
    t, state, l = step(t, state, jax.random.PRNGKey(i))
    losses.append(float(l))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), t, trainable)
  assert all(v > 0 for v in jax.tree_util.tree_leaves(moved))


def test_rate_loss_drives_activation_to_target():
  x = images(b=8)
  model, cfg = make(complete_pass=False, ce_weight=0.0, target_rate=0.3, depth=1)
  params = perturbed_params(model, x, router_bias=2.0)
  trainable, frozen = base.split_params(params, dyt.DYT.trainable)
  opt = optax.adam(0.05)
  state = opt.init(trainable)
  labels = jax.nn.one_hot(jnp.zeros(8, jnp.int32), 10)

  @jax.jit
  def step(t, s, rng):
    (_, m), g = jax.value_and_grad(_loss_fn, argnums=2, has_aux=True)(model, cfg, t, frozen, x, labels, rng)
    u, s = opt.update(g, s, t)
    return optax.apply_updates(t, u), s, m["activation_rate"]

  rates = []
  for i in range(60):
    trainable, state, r = step(trainable, state, jax.random.PRNGKey(i))
    rates.append(float(r))
  assert rates[0] > 0.6
  _, out = jax.jit(model.apply)({"params": base.merge_params(trainable, frozen)}, x)
  assert abs(float(out["activation_rate"].mean()) - 0.3) < 0.1, (rates[-5:], out["activation_rate"])


def test_moe_with_one_expert_equals_adapter():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 16))
  moe = dyt.MoEAdapter(1, 4, 16, scale=0.7)
  ad = Adapter(4, 16, scale=0.7)
  pm = moe.init(jax.random.PRNGKey(1), x, x.mean(1))["params"]
  pm = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(2), a.shape), pm)
  pa = {"down": {"kernel": pm["down_kernel"][0], "bias": pm["down_bias"][0]},
        "up": {"kernel": pm["up_kernel"][0], "bias": pm["up_bias"][0]}}
  np.testing.assert_allclose(moe.apply({"params": pm}, x, x.mean(1)), ad.apply({"params": pa}, x),
                             rtol=1e-5, atol=1e-6)
  # With several experts the per-image mixture differs between images (it is really per image).
  moe3 = dyt.MoEAdapter(3, 4, 16)
  p3 = moe3.init(jax.random.PRNGKey(1), x, x.mean(1))["params"]
  p3 = jax.tree_util.tree_map(lambda a: a + jax.random.normal(jax.random.PRNGKey(3), a.shape), p3)
  y = moe3.apply({"params": p3}, x, x.mean(1))
  y0 = moe3.apply({"params": p3}, x[:1], x[1:2].mean(1))  # image 0 with image 1's gate input
  assert not np.allclose(y[0], y0[0], atol=1e-4)


@pytest.mark.parametrize("dispatch", ["mlp", "attention"])
def test_moe_gate_input(dispatch):
  """The MoE gate reads the mean block input or the mean adapter input: both build; they differ with several experts
  (the two means differ) and agree with one (the softmax over one expert is 1)."""
  x = images()
  for experts, same in [(3, False), (1, True)]:
    outs = []
    for gate in dyt.MOE_GATE_INPUTS:
      model, _ = make(dispatch=dispatch, num_experts=experts, moe_gate_input=gate)
      params = perturbed_params(model, x, seed=1)
      if experts > 1:  # a sharper gate so the mixture depends visibly on its input
        params = jax.tree_util.tree_map_with_path(
            lambda p, v: v * 50.0 if "gate" in jax.tree_util.keystr(p) else v, params)
      outs.append(jax.jit(model.apply)({"params": params}, x)[0])
    assert np.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5) == same, experts


def test_init_is_adapter_noop_and_half_active():
  x = images(b=8)
  model, _ = make()
  params = model.init(RNGS(0), x)["params"]
  blk = params["Transformer"]["encoderblock_0"]
  assert float(jnp.abs(blk["adapter"]["up"]["kernel"]).max()) == 0.0
  d = blk["adapter"]["down"]["kernel"]
  assert float(jnp.abs(d).max()) <= 1 / np.sqrt(d.shape[0])
  np.testing.assert_allclose(jnp.std(blk["router"]["kernel"]), 0.02, rtol=0.25)
  assert float(jnp.abs(blk["router"]["bias"]).max()) == 0.0


def test_bad_config_is_user_error():
  from vit_adapt.errors import UserError
  for bad in [dict(dispatch="token"), dict(inference="fast"), dict(capacity_rate=0.0), dict(num_buckets=9),
              dict(attention_keys="some"), dict(moe_gate_input="tokens")]:
    with pytest.raises(UserError):
      make(**bad)
