"""MET's alternative E-adapter reading, a class token per exit (`config.method.exit_tokens='per_exit'`): its
parameters, that it equals the default reading when the exits' parts coincide and differs otherwise, the masking
(one exit's token reaches that exit only), exact early exiting and the cost of the extra tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_adapt import config_lib, methods
from vit_adapt.efficiency import measure as efficiency_lib
from vit_adapt.errors import UserError
from vit_adapt.methods import base
from vit_adapt.methods import met
from vit_adapt.methods.met import exit as met_exit

K = 4


def _build(**method):
  c, _ = config_lib.make_config("met", "demo")
  c.model.update(variant="mu/4", image_size=16, depth=4)
  c.method.update({"exits": (1, 2, 3, 4), "num_buckets": 4, **method})
  model, m = methods.build_model(c)
  return model, m, methods.init_variables(model, m, c)["params"]


def _randomise(params, suffixes, seed=1):
  """Random heads and up-projections (zero at init) so every exit depends on every adapter."""
  flat = base.flatten(params)
  key = jax.random.PRNGKey(seed)
  for name in sorted(flat):
    if name.endswith(suffixes):
      key, sub = jax.random.split(key)
      flat[name] = flat[name] + jax.random.normal(sub, flat[name].shape) * 0.5
  return base.unflatten(flat)


@pytest.fixture(scope="module")
def both():
  # XLA without most optimisations (conftest's fast_compile, for the whole module): compiling dominates here.
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  shared, _, p_shared = _build()
  per_exit, method, p_tokens = _build(exit_tokens="per_exit")
  p_shared = _randomise(p_shared, ("head/kernel", "up/kernel"))
  images = jax.random.normal(jax.random.PRNGKey(2), (12, 16, 16, 3))
  yield shared, per_exit, method, p_shared, p_tokens, images
  jax.config.update("jax_disable_most_optimizations", old)


def _run(model, params, images):
  """All exits' logits (K, B, C) of the full pass, jitted (one compile per model, not one per op)."""
  return _jitted(model)(params, images)


_JITTED = {}


def _jitted(model):
  if model not in _JITTED:
    _JITTED[model] = jax.jit(lambda p, x: model.apply({"params": p}, x)[1]["exit_logits"])
  return _JITTED[model]


def _with(params, **flat_values):
  flat = dict(base.flatten(params))
  flat.update(flat_values)
  return base.unflatten(flat)


def test_one_learned_token_per_exit(both):
  shared, _, method, p_shared, p_tokens, _ = both
  flat, flat_shared = base.flatten(p_tokens), base.flatten(p_shared)
  assert sorted(k for k in flat if k.endswith("/token")) == [f"exit_{k}/token" for k in range(K)]
  for k in range(K):
    np.testing.assert_array_equal(flat[f"exit_{k}/token"], np.zeros(shared.width))
  assert not any(k.endswith("/token") for k in flat_shared)  # the default reading has none
  # Everything else is the default's tree; the tokens train with the exits.
  assert {k for k in flat if not k.endswith("/token")} == set(flat_shared)
  trainable, _ = base.split_params(p_tokens, method.trainable)
  assert {k for k in base.flatten(trainable) if k.endswith("/token")} == {f"exit_{k}/token" for k in range(K)}


def test_equals_the_default_when_exit_parts_coincide_and_differs_otherwise(both):
  shared, per_exit, _, p_shared, _, images = both
  # Same weights, zero token offsets, every M_k = one random M, every s_k = 0.3: each exit's token follows the same
  # path as the shared class token, so every exit's logits agree (the masked attention sums differently: allclose).
  m = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (8, 8))) * 0.3 + np.eye(8)
  same = _with(p_shared, **{f"exit_{k}/M": m for k in range(K)}, **{f"exit_{k}/s": np.float32(0.3) for k in range(K)})
  tokens = _with(same, **{f"exit_{k}/token": np.zeros(shared.width, np.float32) for k in range(K)})
  np.testing.assert_allclose(_run(per_exit, tokens, images), _run(shared, same, images), rtol=1e-4, atol=1e-5)
  # Distinct M_k: the shared token uses M_k only in exit k's stage, the per-exit token in all its blocks.
  distinct = _with(p_shared, **{f"exit_{k}/M": np.eye(8) + 0.3 * k * m for k in range(K)})
  out_shared = _run(shared, distinct, images)
  out_tokens = _run(per_exit, _with(distinct, **{f"exit_{k}/token": np.zeros(shared.width, np.float32)
                                                 for k in range(K)}), images)
  diff = np.abs(np.asarray(out_tokens) - np.asarray(out_shared)).max(axis=(1, 2))
  assert diff[0] < 1e-5  # exit 0: its stage is block 1 in both readings, with M_0
  assert (diff[1:] > 1e-3).all()


def test_an_exit_token_reaches_its_own_exit_only(both):
  shared, per_exit, _, p_shared, _, images = both
  params = _with(p_shared, **{f"exit_{k}/token": np.zeros(shared.width, np.float32) for k in range(K)})
  base_out = np.asarray(_run(per_exit, params, images))
  for k in range(K - 1):  # the last exit's token is the patches' class token: it reaches every exit
    # A random offset (a constant one would vanish in the LayerNorms).
    offset = np.asarray(jax.random.normal(jax.random.PRNGKey(10 + k), (shared.width,)))
    moved = _with(params, **{f"exit_{k}/token": offset})
    out = np.asarray(_run(per_exit, moved, images))
    changed = np.abs(out - base_out).max(axis=(1, 2))
    assert changed[k] > 1e-3
    np.testing.assert_allclose(np.delete(out, k, 0), np.delete(base_out, k, 0), rtol=1e-6, atol=1e-6)


def test_early_exit_is_exact_with_tokens_per_exit(both):
  shared, per_exit, _, p_shared, _, images = both
  params = _with(p_shared, **{f"exit_{k}/token": 0.1 * np.asarray(jax.random.normal(jax.random.PRNGKey(k),
                                                                                      (shared.width,)))
                              for k in range(K)})
  v = {"params": params}
  exit_logits = _run(per_exit, params, images)
  conf = np.asarray(met_exit.confidence(exit_logits, "max_softmax"))
  th = tuple(float(np.quantile(conf[k], q)) + 1e-6 for k, q in zip(range(K - 1), (0.6, 0.5, 0.5)))
  want_logits, want_exit = met_exit.select_exit(exit_logits, th, "max_softmax")
  assert len(set(np.asarray(want_exit).tolist())) >= 3
  logits, exit_idx = jax.jit(lambda v, x: per_exit.apply(v, x, jnp.asarray(th), method=met.METViT.early_exit))(
      v, images)
  np.testing.assert_array_equal(exit_idx, want_exit)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)


def test_exit_costs_count_the_extra_tokens(both):
  shared, per_exit, _, _, p_tokens, _ = both
  costs, base_costs = np.asarray(per_exit.exit_gmacs), np.asarray(shared.exit_gmacs)
  assert (costs > base_costs).all()
  # Stage k carries K-1-k early tokens: the extra cost per stage shrinks to zero at the last stage.
  extra = np.diff(np.concatenate([[0.0], costs - base_costs]))
  assert (extra[:-1] > 0).all() and all(a > b for a, b in zip(extra[:-2], extra[1:-1]))
  full = efficiency_lib.lowered_gmacs(lambda p, im: per_exit.apply({"params": p}, im)[1]["exit_logits"], p_tokens,
                                      jnp.zeros((1, 16, 16, 3)))
  assert costs[-1] == pytest.approx(full, rel=1e-4)


def test_exit_tokens_value_is_checked():
  with pytest.raises(UserError, match=r"config.method.exit_tokens='token'.*\('shared', 'per_exit'\)"):
    _build(exit_tokens="token")
