"""Hyper-parameters as program arguments (vit_adapt/train/hparams.py): which fields, one program for a
learning-rate grid, and runs mapped one after another computing bitwise what each computes alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config
from vit_adapt import methods, tasks
from vit_adapt.train import hparams, optim
from vit_adapt.train import step as train_state


def test_the_fields_passed_as_values():
  c = make_tiny_config("adapter", optim=dict(wd=1e-4))
  assert hparams.value_fields(c) == ("optim.lr", "optim.min_lr", "optim.wd", "method.scale")
  # A zero weight decay drops the decay term from the program: it stays a constant.
  assert "optim.wd" not in hparams.value_fields(make_tiny_config("adapter", optim=dict(wd=0.0)))
  dyt = hparams.value_fields(make_tiny_config("dyt"))
  assert {"method.target_rate", "method.rate_weight", "method.scale"} <= set(dyt)
  assert hparams.value_fields(make_tiny_config("linear", optim=dict(wd=0.0))) == ("optim.lr", "optim.min_lr")
  values = hparams.values_of(c)
  assert list(values) == list(hparams.value_fields(c))
  assert all(v.dtype == np.float32 and v.shape == () for v in values.values())
  assert values["optim.lr"] == np.float32(c.optim.lr)


def _lowered_step(c, with_values: bool) -> str:
  model, method = methods.build_model(c)
  task = tasks.for_config(c)
  variables = dict(jax.eval_shape(lambda: methods.init_variables(model, method, c)))
  trainable, frozen = optim.split_trainable(variables.pop("params"), method, c.optim)
  tx, sched = optim.make_optimizer(c.optim, trainable, 100, 10)
  state = jax.eval_shape(lambda t, m: train_state.create(t, m, tx, 0), trainable, variables)
  batch = task.batch_spec(c, c.train.batch_size)
  if with_values:
    step = hparams.train_step(c, method, task, 100, 10)
    return jax.jit(step).lower(state, frozen, batch, hparams.values_of(c)).as_text()
  return jax.jit(train_state.make_train_step(model, method, c, tx, sched, task)).lower(state, frozen, batch).as_text()


def test_a_learning_rate_grid_compiles_to_one_program():
  a = make_tiny_config("adapter", optim=dict(lr=1e-3, wd=1e-4))
  b = make_tiny_config("adapter", optim=dict(lr=3e-3, wd=2e-4))
  a.method.scale, b.method.scale = 0.1, 0.5
  # The values are arguments: one program (one compilation-cache entry) for every point of the grid...
  assert _lowered_step(a, with_values=True) == _lowered_step(b, with_values=True)
  # ...where folding them in as constants gives a program per point.
  assert _lowered_step(a, with_values=False) != _lowered_step(b, with_values=False)


def _f(x, w, s):
  h = jnp.tanh(x @ w)
  return jnp.sum(h * s, axis=-1), jnp.mean(h)


def test_runs_mapped_one_after_another_compute_what_each_computes_alone():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 16, 96)).astype(np.float32)
  w = rng.normal(size=(96, 80)).astype(np.float32)
  s = rng.normal(size=(5,)).astype(np.float32)
  exact = jax.jit(hparams.over_runs(_f, (0, None, 0), exact=True))(x, w, s)
  batched = jax.jit(hparams.over_runs(_f, (0, None, 0), exact=False))(x, w, s)
  alone = jax.jit(_f)
  for i in range(5):
    for got, want in zip(exact, alone(x[i], w, s[i])):
      np.testing.assert_array_equal(got[i], want)
  for e, b in zip(exact, batched):
    assert e.shape == b.shape
    np.testing.assert_allclose(e, b, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="0 or None"):
    hparams.over_runs(_f, (1, None, 0), exact=True)
