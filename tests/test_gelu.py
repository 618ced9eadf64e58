"""The exact GELU of models/vit.py (erf form, the fast lowering on CPU) against the float64 GELU."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from vit_adapt.models import vit


def _gelu64(x):
  return np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.ravel()]).reshape(x.shape)


def test_gelu_matches_float64_exact_gelu():
  x = np.concatenate([np.linspace(-12, 12, 4001), np.random.default_rng(0).normal(0, 3, 4000)]).astype(np.float32)
  got = np.asarray(jax.jit(vit.gelu)(x))
  want = _gelu64(x.astype(np.float64))
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
  # and the erfc form (jax.nn.gelu) it replaces: same numbers to float32 rounding
  np.testing.assert_allclose(got, np.asarray(jax.nn.gelu(x, approximate=False)), rtol=0, atol=2e-6)
  assert np.all(got[x < -6] <= 0) and np.all(got[x < -6] > -1e-6)  # no blow-up in the far negative tail


def test_gelu_keeps_dtype():
  x = jnp.linspace(-3, 3, 7, dtype=jnp.bfloat16)
  out = vit.gelu(x)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _gelu64(np.asarray(x, np.float64)), atol=2e-2)
