"""MET: shared E-adapter projections, the graph regulariser, the loss, exit costs and the early-exit pass."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_adapt.tasks import classification
from vit_adapt import config_lib, methods
from vit_adapt.efficiency import measure as efficiency_lib
from vit_adapt.errors import UserError
from vit_adapt.methods import base
from vit_adapt.methods import met
from vit_adapt.methods.met import exit as met_exit
from vit_adapt.methods.met import loss as met_loss
from vit_adapt.models.adapters import Adapter


def tiny_config(**method):
  c, _ = config_lib.make_config("met", "demo")
  c.model.update(variant="mu/4", image_size=16, depth=4)
  c.method.update({"exits": (1, 2, 3, 4), "num_buckets": 4, **method})
  return c


@pytest.fixture(scope="module")
def built():
  c = tiny_config()
  model, method = methods.build_model(c)
  init = methods.init_variables(model, method, c)["params"]
  params = init
  # Random heads and up-projections (both start at zero) so every exit depends on every adapter.
  flat = base.flatten(params)
  key = jax.random.PRNGKey(1)
  for name in sorted(flat):
    if name.endswith(("head/kernel", "up/kernel")):
      key, sub = jax.random.split(key)
      flat[name] = jax.random.normal(sub, flat[name].shape) * 0.5
  images = jax.random.normal(jax.random.PRNGKey(2), (12, 16, 16, 3))
  return c, model, method, base.unflatten(flat), images, init


def test_param_tree_one_shared_projection_per_block(built):
  c, model, method, params, _, init = built
  flat = base.flatten(params)
  for name in ("down", "up"):
    found = sorted(k for k in flat if f"eadapter/{name}/kernel" in k)
    assert found == [f"Transformer/encoderblock_{i}/eadapter/{name}/kernel" for i in range(4)]
  # Exit-specific parts: M_k (r x r, identity at init), s_k; early exits own LN + head, the last uses the backbone's.
  assert sorted(k for k in flat if k.startswith("exit_") and k.endswith("/M")) == [f"exit_{k}/M" for k in range(4)]
  assert "exit_3/head/kernel" not in flat and "head/kernel" in flat and "exit_2/head/kernel" in flat
  np.testing.assert_array_equal(init["exit_1"]["M"], np.eye(8))
  assert float(init["exit_1"]["s"]) == pytest.approx(0.1)
  trainable, frozen = base.split_params(params, method.trainable)
  tflat = base.flatten(trainable)
  assert all("eadapter" in k or k.startswith(("exit_", "head/", "Transformer/encoder_norm/")) for k in tflat)
  assert "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in base.flatten(frozen)


def test_shared_projections_get_gradients_from_every_exit(built):
  _, model, _, params, images, _ = built
  trainable, frozen = base.split_params(params, met.MET.trainable)

  def exit_sums(tr):  # (4,): one scalar per exit; its Jacobian row k holds the gradients from exit k
    _, out = model.apply({"params": base.merge_params(tr, frozen)}, images, train=False)
    return jnp.sum(out["exit_logits"] ** 2, axis=(1, 2))

  jac = base.flatten(jax.jit(jax.jacrev(exit_sums))(trainable))
  for k in range(4):
    g = {name: value[k] for name, value in jac.items()}
    for blk in range(4):
      for name in ("down", "up"):
        norm = float(jnp.linalg.norm(g[f"Transformer/encoderblock_{blk}/eadapter/{name}/kernel"]))
        if blk <= k:   # block blk (0-based) is before exit k (after block k+1): the shared weight serves it
          assert norm > 0, (k, blk, name)
        else:          # later blocks cannot influence an earlier exit
          assert norm == 0, (k, blk, name)
    # Exit-specific M_j only reaches exit k through the blocks of stage j <= k.
    for j in range(4):
      assert (float(jnp.linalg.norm(g[f"exit_{j}/M"])) > 0) == (j <= k)


def test_eadapter_with_identity_m_equals_plain_adapter():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 16))
  ea = met.EAdapter(4, 16, scale=0.3, activation="gelu")
  v = ea.init(jax.random.PRNGKey(1), x, jnp.eye(4), 0.3)
  v = jax.tree_util.tree_map(lambda a: a + 0.1, v)  # non-zero up-projection
  ad = Adapter(4, 16, scale=0.3, activation="gelu")
  np.testing.assert_allclose(ea.apply(v, x, jnp.eye(4), 0.3), ad.apply(v, x), rtol=1e-6, atol=1e-6)
  # A different class-token transformation changes the class token only.
  y = ea.apply(v, x, 2 * jnp.eye(4), 0.3)
  np.testing.assert_allclose(y[:, 1:], ad.apply(v, x)[:, 1:], rtol=1e-6, atol=1e-6)
  assert not np.allclose(y[:, 0], ad.apply(v, x)[:, 0])


def test_graph_term_zero_when_same_class_features_coincide():
  labels = jnp.array([0, 0, 1, 1, 2, 2])
  centers = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
  feats = centers[labels]
  assert float(met_loss.graph_term(feats, labels)) == 0.0
  # Only the direction counts (features are L2-normalised).
  scaled = feats * jnp.array([1.0, 3.0, 1.0, 0.5, 2.0, 2.0])[:, None]
  assert float(met_loss.graph_term(scaled, labels)) == pytest.approx(0.0, abs=1e-12)
  noisy = feats + 0.3 * jax.random.normal(jax.random.PRNGKey(1), feats.shape)
  assert float(met_loss.graph_term(noisy, labels)) > 0.0
  # Hand-computed value: 1/2 mean over ordered same-class pairs of ||z_i - z_j||^2.
  z = noisy / jnp.linalg.norm(noisy, axis=1, keepdims=True)
  expect = 0.5 * np.mean([float(jnp.sum((z[i] - z[i + 1]) ** 2)) for i in (0, 2, 4)])
  assert float(met_loss.graph_term(noisy, labels)) == pytest.approx(expect, rel=1e-5)


def test_graph_term_finite_without_positive_pairs():
  labels = jnp.arange(5)
  feats = jax.random.normal(jax.random.PRNGKey(0), (5, 8))
  for guard in ("none", "contrast"):
    value, grad = jax.value_and_grad(lambda f: met_loss.graph_term(f, labels, guard=guard))(feats)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
  assert float(met_loss.graph_term(feats, labels)) == 0.0
  # The contrast guard pushes different classes apart: negative when no same-class pair exists.
  assert float(met_loss.graph_term(feats, labels, guard="contrast")) < 0.0
  # One-sample batch and a zero feature vector stay finite too.
  assert np.isfinite(float(met_loss.graph_term(jnp.zeros((1, 8)), jnp.zeros((1,), jnp.int32))))


def test_relational_guard():
  labels = jnp.array([0, 1, 0, 1])
  f = jax.random.normal(jax.random.PRNGKey(0), (4, 8))
  assert float(met_loss.graph_term(f, labels, guard="relational", last_feat=2 * f)) == pytest.approx(0, abs=1e-6)
  g = jax.grad(lambda last: met_loss.graph_term(f, labels, guard="relational", last_feat=last))(f + 1)
  assert float(jnp.abs(g).sum()) == 0.0  # stop-gradient on the last exit
  assert float(met_loss.graph_term(f, labels, guard="relational", last_feat=f + 1)) > 0


def test_loss_is_sum_of_exit_ce_plus_weighted_graph(built):
  c, model, method, params, images, _ = built
  labels = jax.nn.one_hot(jnp.array([0, 1, 0, 1, 2, 2, 3, 3, 4, 5, 6, 7]), 10)
  logits, out = model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
  inp = base.LossInputs(logits, out, labels, forward=None, config=c.method, train=True,
                        task_loss=lambda lg: classification.loss(lg, labels))
  total, metrics = method.loss(inp)
  ces = [float(jnp.mean(optax.softmax_cross_entropy(out["exit_logits"][k], labels))) for k in range(4)]
  graph = sum(float(met_loss.graph_term(out["exit_features"][k], jnp.argmax(labels, -1))) for k in range(3))
  assert graph > 0
  assert float(total) == pytest.approx(sum(ces) + 0.1 * graph, rel=1e-5)
  assert float(metrics["graph"]) == pytest.approx(graph, rel=1e-5)
  np.testing.assert_allclose(out["exit_logits"][-1], logits)


def test_exit_costs_add_up_to_the_compiled_full_model(built):
  _, model, _, params, _, _ = built
  costs = model.exit_gmacs
  assert len(costs) == 4 and all(b > a for a, b in zip(costs, costs[1:]))
  x = jnp.zeros((1, 16, 16, 3))
  # The full pass returning every exit's logits (returning only the last would let XLA drop the early heads).
  full = efficiency_lib.lowered_gmacs(lambda p, im: model.apply({"params": p}, im)[1]["exit_logits"], params, x)
  assert costs[-1] == pytest.approx(full, rel=1e-4)
  # Equal stages cost the same.
  np.testing.assert_allclose(np.diff(costs[:3]), np.diff(costs[:3])[0], rtol=1e-4)


def _thresholds_between(conf, quantiles):
  """Thresholds half-way between neighbouring confidences (no example sits on a threshold)."""
  out = []
  for k, q in enumerate(quantiles):
    s = np.sort(np.asarray(conf[k]))
    i = int(q * (len(s) - 1))
    out.append(float((s[i] + s[i + 1]) / 2))
  return tuple(out)


def test_early_exit_equals_full_network_oracle(built):
  _, model, _, params, images, _ = built
  v = {"params": params}
  _, full = model.apply(v, images)
  conf = met_exit.confidence(full["exit_logits"], "max_softmax")
  # Thresholds as a traced argument: one compiled early-exit program serves every case.
  early = jax.jit(lambda v, x, th: model.apply(v, x, th, method=met.METViT.early_exit))
  cases = [_thresholds_between(conf, q) for q in ((0.3, 0.5, 0.6), (0.8, 0.2, 0.9), (0.1, 0.1, 0.1))]
  cases += [(-1.0, 2.0, 2.0), (2.0, 2.0, 2.0), (2.0, -1.0, 2.0)]  # all at exit 0, none early, all at exit 1
  taken = set()
  for th in cases:
    want_logits, want_exit = met_exit.select_exit(full["exit_logits"], th, "max_softmax")
    for i in range(images.shape[0]):  # the oracle by hand, example by example
      assert int(want_exit[i]) == next((k for k in range(3) if conf[k, i] >= th[k]), 3)
    logits, exit_idx = early(v, images, jnp.asarray(th))
    np.testing.assert_array_equal(exit_idx, want_exit)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
    taken |= set(np.asarray(want_exit).tolist())
  assert taken == {0, 1, 2, 3}

  # The configured path (`__call__(train=False)` with calibrated thresholds), both inference modes, + eval stats.
  th = cases[0]
  want_logits, want_exit = met_exit.select_exit(full["exit_logits"], th, "max_softmax")
  assert len(set(np.asarray(want_exit).tolist())) >= 3  # several exits really taken
  for mode in ("early_exit", "dense_select"):
    m = model.clone(thresholds=th, inference=mode)
    logits, out = jax.jit(lambda v, x: m.apply(v, x))(v, images)
    np.testing.assert_array_equal(out["exit"], want_exit)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["gmacs"], np.asarray(model.exit_gmacs, np.float32)[np.asarray(want_exit)])
    stats = met.eval_stats(logits, out, jax.nn.one_hot(jnp.zeros(logits.shape[0], jnp.int32), logits.shape[-1]))
    np.testing.assert_array_equal(stats["exit"], np.asarray(want_exit, np.float32))


def test_entropy_confidence_and_capacities():
  logits = jnp.array([[0.0, 0.0], [10.0, 0.0]])
  h = met_exit.confidence(logits, "entropy")
  assert float(h[0]) == pytest.approx(-np.log(2), rel=1e-6) and float(h[1]) > float(h[0])
  assert met_exit.batch_capacities(16, 8) == (0, 2, 4, 6, 8, 10, 12, 14, 16)
  assert met_exit.batch_capacities(5, 4) == (0, 2, 3, 4, 5)


def test_config_errors():
  with pytest.raises(UserError, match="exits"):
    methods.build_model(tiny_config(exits=(1, 3)))
  with pytest.raises(UserError, match="thresholds"):
    methods.build_model(tiny_config(thresholds=(0.5,)))
  with pytest.raises(UserError, match="graph_guard"):
    methods.build_model(tiny_config(graph_guard="nope"))
