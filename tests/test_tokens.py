"""Static-shape token ops: top-k, gather/scatter, fuse, compaction, bucketed dispatch equals masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_adapt.models import tokens


def _x(b=3, n=11, d=5, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (b, n, d))


def test_topk_gather_scatter_roundtrip():
  x = _x()
  scores = jax.random.normal(jax.random.PRNGKey(1), x.shape[:2])
  idx = tokens.topk_indices(scores, 4)
  np.testing.assert_array_equal(idx, np.argsort(-np.asarray(scores), axis=1)[:, :4])
  idx_sorted = tokens.topk_indices(scores, 4, sort_by_position=True)
  assert np.all(np.diff(np.asarray(idx_sorted), axis=1) > 0)
  kept = tokens.gather_tokens(x, idx)
  np.testing.assert_allclose(kept[1, 2], x[1, idx[1, 2]])
  back = tokens.scatter_add_tokens(jnp.zeros_like(x), idx, kept)
  mask = tokens.indices_to_mask(idx, x.shape[1])
  assert mask.sum() == 3 * 4
  np.testing.assert_allclose(back, jnp.where(mask[..., None], x, 0))
  # duplicates accumulate in scatter_add
  dup = jnp.zeros((1, 2), jnp.int32)
  acc = tokens.scatter_add_tokens(jnp.zeros((1, 3, 1)), dup, jnp.ones((1, 2, 1)))
  np.testing.assert_allclose(acc[0, :, 0], [2, 0, 0])
  np.testing.assert_allclose(tokens.scatter_tokens(x, idx, kept), x)


def test_fuse_rest_is_weighted_mean_of_dropped():
  x = _x()
  w = jax.random.uniform(jax.random.PRNGKey(2), x.shape[:2])
  keep = tokens.indices_to_mask(tokens.topk_indices(w, 6), x.shape[1])
  fused = tokens.fuse_rest(x, w, keep)
  xn, wn, kn = map(np.asarray, (x, w, keep))
  for b in range(x.shape[0]):
    ww = wn[b] * ~kn[b]
    np.testing.assert_allclose(fused[b, 0], (ww[:, None] * xn[b]).sum(0) / ww.sum(), rtol=1e-5)
  np.testing.assert_allclose(tokens.fuse_rest(x, w, jnp.ones_like(keep)), 0.0)


def test_first_active_indices():
  mask = jnp.array([[True, False, True, False, True], [False, False, False, True, False]])
  idx, valid = tokens.first_active_indices(mask, 3)
  np.testing.assert_array_equal(idx[0], [0, 2, 4])
  np.testing.assert_array_equal(valid[0], [True, True, True])
  assert idx[1, 0] == 3 and valid[1].tolist() == [True, False, False]


def test_compact_indices_and_padding():
  mask = jnp.array([False, True, True, False, True, False])
  idx = tokens.compact_indices(mask, 5)
  np.testing.assert_array_equal(idx, [1, 2, 4, 6, 6])
  rows = jnp.arange(12.0).reshape(6, 2)
  got = tokens.gather_rows(rows, idx)
  np.testing.assert_allclose(got[:3], rows[jnp.array([1, 2, 4])])
  out = tokens.scatter_rows(jnp.zeros_like(rows), idx, got * 10)
  np.testing.assert_allclose(out, jnp.where(mask[:, None], rows * 10, 0))


def test_bucket_capacities_and_choice():
  caps = tokens.bucket_capacities(1576)
  assert len(caps) == 8 and caps[-1] == 1576 and list(caps) == sorted(set(caps))
  assert tokens.bucket_capacities(10, 4, include_zero=True)[0] == 0
  for count, want in [(0, 0), (197, 0), (198, 1), (1576, 7), (5000, 7)]:
    assert int(tokens.choose_bucket(jnp.int32(count), caps)) == want
  with pytest.raises(ValueError):
    tokens.bucket_capacities(10, 9)


@pytest.mark.parametrize("fine", [False, True])
@pytest.mark.parametrize("rate", [0.0, 0.03, 0.5, 0.51, 0.97, 1.0])
def test_apply_on_active_rows_equals_masking(fine, rate):
  r, d = 203, 7
  rows = jax.random.normal(jax.random.PRNGKey(3), (r, d))
  w = jax.random.normal(jax.random.PRNGKey(4), (d, 9))
  mask = jax.random.uniform(jax.random.PRNGKey(5), (r,)) < rate
  fn = lambda z: jnp.tanh(z @ w)
  got, computed = jax.jit(lambda a, m: tokens.apply_on_active_rows(fn, a, m, fine=fine))(rows, mask)
  want = jnp.where(mask[:, None], fn(rows), 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  count = int(mask.sum())
  assert int(computed) >= count
  # Waste bound: one bucket step (R/8 rounded up to 8 rows) for one level, one fine step (R/64 -> 8 rows).
  assert int(computed) - count <= (32 if not fine else 8)


def _dot_rows(jaxpr):
  """Leading dims of the lhs of every dot_general in a jaxpr, recursing into sub-jaxprs."""
  rows = []
  for eq in jaxpr.eqns:
    if eq.primitive.name == "dot_general":
      rows.append(eq.invars[0].aval.shape[0])
    for p in eq.params.values():
      for j in (p if isinstance(p, (list, tuple)) else [p]):
        inner = getattr(j, "jaxpr", j)
        if hasattr(inner, "eqns"):
          rows += _dot_rows(inner)
  return rows


def test_apply_on_active_rows_branches_compute_only_their_capacity():
  """Each lax.switch branch runs the function on exactly its capacity; nothing outside runs it on all rows."""
  r, d = 160, 4
  w = jnp.ones((d, 3))
  fn = lambda z: z @ w
  jaxpr = jax.make_jaxpr(lambda a, m: tokens.apply_on_active_rows(fn, a, m, fine=False))(
      jnp.ones((r, d)), jnp.ones((r,), bool)).jaxpr
  conds = [eq for eq in jaxpr.eqns if eq.primitive.name == "cond"]
  assert len(conds) == 1
  per_branch = [_dot_rows(b.jaxpr) for b in conds[0].params["branches"]]
  assert per_branch == [[c] for c in tokens.bucket_capacities(r, multiple=8)]
  assert _dot_rows(jaxpr) == sorted(tokens.bucket_capacities(r, multiple=8))  # the only dots are in branches
