"""The memory levers: gradient accumulation (`train.accum_steps`) makes the large batch's update, per-block
rematerialisation (`model.remat`) changes no gradient, and both lower the training step's compiled memory."""

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_adapt import config_lib, methods
from vit_adapt.errors import UserError
from vit_adapt.methods import dyt
from vit_adapt.models import remat
from vit_adapt.train import optim
from vit_adapt.train import step as train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(tiny_config, method, **blocks):
  config = tiny_config(method, **blocks)
  config.model.dropout = 0.0
  if "dropout" in config.method and method != "met":
    config.method.dropout = 0.0  # dropout masks are drawn per (micro-)batch: they cannot match
  if method == "met":
    config.method.exits = (1, 2)
  if method == "sparse_tuning":
    config.method.sparse_blocks = (1,)
  return config


def _batch(n, size=32, classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.uniform(-1, 1, (n, size, size, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, classes, n), jnp.int32)}


def _sgd_step(config, batch):
  """One training step with plain SGD (lr 1): -update = the gradient, linear in it (AdamW's first update is
  ~sign(g), which would amplify rounding of near-zero gradients). -> (gradients, metrics, new model state)."""
  model, method = methods.build_model(config)
  variables = methods.init_variables(model, method, config)
  params = variables.pop("params")
  trainable, frozen = optim.split_trainable(params, method, config.optim)
  tx, sched = optax.sgd(1.0), optax.constant_schedule(1.0)
  state = train_state.create(trainable, dict(variables), tx, config.seed)
  new, metrics = jax.jit(train_state.make_train_step(model, method, config, tx, sched))(state, frozen, batch)
  grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), trainable, new.params)
  return grads, jax.device_get(metrics), jax.device_get(new.model_state)


def _zero_noise_gumbel(logits, rng, tau):
  # DyT's Gumbel noise is drawn for the (micro-)batch's shape: without noise the masks are the same either way.
  del rng
  soft = jax.nn.sigmoid(logits / tau)
  return (soft > 0.5).astype(soft.dtype) + soft - jax.lax.stop_gradient(soft)


@pytest.mark.parametrize("method", ["adapter", "dyt"])
def test_accumulated_update_equals_the_large_batch_update(tiny_config, fast_compile, monkeypatch, method):
  monkeypatch.setattr(dyt, "gumbel_sigmoid_st", _zero_noise_gumbel)
  config = _tiny(tiny_config, method, train=dict(batch_size=8))
  if method == "dyt":
    # A rate far from its target, weighted up: the rate loss (a square of the whole batch's mean activation, not
    # a mean of per-example terms) dominates the router's gradient; it is exact only through `batch_mean`.
    config.method.update(target_rate=0.1, rate_weight=20.0, num_buckets=2)
  batch = _batch(8)
  grads, metrics, _ = _sgd_step(config, batch)
  config.train.accum_steps = 4
  accum_grads, accum_metrics, _ = _sgd_step(config, batch)
  assert sorted(metrics) == sorted(accum_metrics)
  for k in metrics:
    np.testing.assert_allclose(accum_metrics[k], metrics[k], rtol=1e-5, atol=1e-6, err_msg=k)
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert max(np.abs(g).max() for _, g in leaves) > 1e-3  # the gradients being compared are not all ~0
  for (path, g), a in zip(leaves, jax.tree.leaves(accum_grads)):
    np.testing.assert_allclose(a, g, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_accumulation_averages_batch_statistics_updates(tiny_config, fast_compile):
  """Sparse-Tuning's BatchNorm head normalises each micro-batch by its own statistics; its running statistics
  get one update per step, the mean of the micro-batches' (as a large batch's mean would be)."""
  config = _tiny(tiny_config, "sparse_tuning", train=dict(batch_size=8))
  batch = _batch(8)
  _, metrics, state = _sgd_step(config, batch)
  config.train.accum_steps = 2
  _, accum_metrics, accum_state = _sgd_step(config, batch)
  assert sorted(metrics) == sorted(accum_metrics) and all(np.isfinite(v) for v in accum_metrics.values())
  # running mean = 0.9 * 0 + 0.1 * batch mean: the micro-batch means average to the batch mean.
  np.testing.assert_allclose(accum_state["batch_stats"]["head_bn"]["mean"],
                             state["batch_stats"]["head_bn"]["mean"], rtol=1e-5, atol=1e-6)


def test_micro_batches_are_strided_so_every_device_feeds_each():
  batch = {"x": jnp.arange(8)}
  np.testing.assert_array_equal(train_state.split_micro_batches(batch, 4)["x"], [[0, 4], [1, 5], [2, 6], [3, 7]])


# The slowest to compile twice (20-90 s each) run with the slow tests.
_SLOW = ("dyt", "met", "synqt")


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in _SLOW else m
                                    for m in sorted(methods.names())])
def test_remat_gives_the_same_gradients(tiny_config, fast_compile, method):
  config = _tiny(tiny_config, method, train=dict(batch_size=4))
  if method == "dyt":
    config.method.num_buckets = 2
  batch = _batch(4)
  grads, metrics, _ = _sgd_step(config, batch)
  config.model.remat = "dots" if method != "adapter" else "full"
  model, _ = methods.build_model(config)
  assert type(model.block_cls).__name__ != "Remat" and model.block_cls.__name__.startswith("Remat")
  remat_grads, remat_metrics, _ = _sgd_step(config, batch)
  assert jax.tree.structure(grads) == jax.tree.structure(remat_grads)  # the same parameter names
  for k in metrics:
    np.testing.assert_allclose(remat_metrics[k], metrics[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(remat_grads)):
    np.testing.assert_allclose(r, g, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def _memory(config):
  model, method = methods.build_model(config)
  variables = methods.abstract_variables(model, method, config)
  return train_state.train_step_memory(config, model, method, variables)


def test_train_step_memory_reflects_remat_and_accumulation(tiny_config, fast_compile):
  # Enough tokens and width that activations, not parameters, dominate the step's memory.
  config = _tiny(tiny_config, "adapter", model=dict(variant="Ti/8", image_size=32, depth=4),
                 train=dict(batch_size=32))
  base = _memory(config)
  config.model.remat = "dots"
  dots = _memory(config)
  config.model.remat = "full"
  full = _memory(config)
  config.model.remat = ""
  config.train.accum_steps = 4
  accum = _memory(config)
  # Measured (jax 0.10, XLA CPU, unoptimised): dots 0.84, full 0.61, accumulation 0.50 of the plain step. 'dots'
  # saves least: the exact GELU's erf intermediates are not dots, so they stay saved.
  assert dots < 0.9 * base and full < 0.75 * dots
  assert accum < 0.7 * base


def test_tied_checkpoint_recomputes_a_dense_stack_after_its_cotangents(fast_compile):
  """On XLA CPU plain `jax.checkpoint` keeps a stack of dense layers' activations (its barriers are stripped);
  `tied_checkpoint` keeps only the layer inputs, with the same gradients."""
  def layer(p, x):
    return x + jnp.tanh(jax.nn.gelu(x @ p[0])) @ p[1]

  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  ps = [(0.05 * jax.random.normal(keys[0], (64, 512)), 0.05 * jax.random.normal(keys[1], (512, 64)))] * 6
  x = jax.random.normal(keys[2], (256, 64))

  def grad(f):
    return jax.jit(jax.grad(lambda ps, x: jnp.sum(functools.reduce(lambda h, p: f(p, h), ps, x) ** 2)))

  plain, tied = grad(layer), grad(remat.tied_checkpoint(layer, remat.POLICIES["full"]))
  temp = lambda g: g.lower(ps, x).compile().memory_analysis().temp_size_in_bytes
  assert temp(tied) < 0.5 * temp(plain)
  for a, b in zip(jax.tree.leaves(tied(ps, x)), jax.tree.leaves(plain(ps, x))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_remat_lowers_dyt_train_step_memory(tiny_config, fast_compile):
  """DyT's block returns its router outputs beside the stream and the step runs a second (complete) pass: with
  `jax.checkpoint`'s optimisation barriers alone XLA's CPU pipeline merged each block's recomputation back into
  the forward pass and 'full' kept every activation (the same peak as off)."""
  config = _tiny(tiny_config, "dyt", model=dict(variant="Ti/8", image_size=32, depth=4), train=dict(batch_size=8))
  assert config.method.complete_pass
  base = _memory(config)
  config.model.remat = "full"
  full = _memory(config)
  assert full < 0.75 * base, (full, base)  # measured: 14.7 MiB vs 23.4 MiB (the parameters are ~7 MiB of both)


def test_bad_memory_settings_are_named(tiny_config):
  config = tiny_config("adapter", train=dict(batch_size=8, accum_steps=3))
  with pytest.raises(UserError, match=r"config\.train\.accum_steps=3.*divides config\.train\.batch_size=8"):
    config_lib.validate(config)
  config = tiny_config("adapter", model=dict(remat="everything"))
  with pytest.raises(UserError, match=r"config\.model\.remat='everything'.*'dots'"):
    config_lib.validate(config)


@pytest.mark.parametrize("name", ["dyt_vtab", "sparse_tuning_vtab"])
def test_complete_dataset_recipes_accumulate_to_their_global_batch(name):
  """The recipes' global batches (DyT 1024, Sparse-Tuning 512) are kept; the memory levers make them fit."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("task=cifar100,complete")
  config_lib.validate(config)
  assert config.train.batch_size == {"dyt_vtab": 1024, "sparse_tuning_vtab": 512}[name]
  assert config.train.accum_steps > 1 and f"accum_steps={config.train.accum_steps}" in module.__doc__
  assert "XLA CPU memory analysis" in module.__doc__
  assert not config.model.remat or f"model.remat='{config.model.remat}'" in module.__doc__
  assert module.get_config("task=vtab/dtd").train.accum_steps == 1  # VTAB-1k's batch 64 needs none
