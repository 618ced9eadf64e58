"""Configs, validation and the optimizer: every config file loads, unknown keys are named, the schedule and the
per-parameter policies do what the config says, and only the trainable sub-tree is differentiated."""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_adapt import config_lib, methods
from vit_adapt.efficiency import measure as efficiency_lib
from vit_adapt.train import optim
from vit_adapt.train import step as train_state
from vit_adapt.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = ("full", "linear", "adapter", "lora", "vpt")


def load_config_file(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(arg)


@pytest.mark.parametrize("method", BASELINES)
def test_config_files_build_valid_configs_with_documented_commands(method):
  module, config = load_config_file(f"{method}_vtab", "task=vtab/dtd")
  config_lib.validate(config)
  assert config.method.name == method and config.dataset.name == "vtab/dtd"
  assert config.dataset.num_classes == 47 and config.model.variant == "B/16"
  assert config.model.init == "weights/ViT-B_16.npz"
  assert f"--config=configs/{method}_vtab.py" in module.__doc__ and "prints" in module.__doc__
  demo = module.get_config("demo")
  config_lib.validate(demo)
  assert demo.dataset.name == "demo/digits" and demo.model.init == ""
  assert f"configs/{method}_vtab.py:demo" in module.__doc__


def test_unknown_config_argument_and_keys_are_named():
  with pytest.raises(UserError, match="'tsak'"):
    load_config_file("adapter_vtab", "tsak=vtab/dtd")
  config = load_config_file("adapter_vtab")[1]
  config.train.unlock()
  config.train.bach_size = 32
  with pytest.raises(UserError, match=r"config\.train\.bach_size"):
    config_lib.validate(config)
  config = load_config_file("lora_vtab")[1]
  config.method.rnak = 4
  with pytest.raises(UserError, match=r"config\.method\.rnak.*rank"):
    config_lib.validate(config)
  config = load_config_file("lora_vtab")[1]
  del config.optim["policies"]
  with pytest.raises(UserError, match=r"config\.optim\.policies.*missing"):
    config_lib.validate(config)


def test_schedule_warmup_then_cosine_to_min_lr():
  c = config_lib.base_config("linear").optim
  c.update(lr=1e-3, min_lr=1e-5)
  sched = optim.schedule(c, total_steps=100, warmup_steps=10)
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(5e-4)
  assert float(sched(10)) == pytest.approx(1e-3)
  mid = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 45 / 90))
  assert float(sched(55)) == pytest.approx(mid, rel=1e-5)
  assert float(sched(100)) == pytest.approx(1e-5, rel=1e-5)
  assert float(optim.schedule(c, 50, 0)(0)) == pytest.approx(1e-3)


def _adamw_step(p, g, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
  """One PyTorch-AdamW step from zero moments (bias-corrected)."""
  m, v = (1 - b1) * g, (1 - b2) * g * g
  return p - lr * (m / (1 - b1) / (np.sqrt(v / (1 - b2)) + eps) + wd * p)


def test_adamw_policies_lr_and_wd_multipliers_and_frozen():
  c = config_lib.base_config("full").optim
  c.update(lr=0.1, min_lr=0.1, wd=0.5, policies=(("^head/", "lr=10 wd=0"), ("bias$", "wd=2"),
                                                 ("^frozen/", "frozen")))
  params = {"head": {"kernel": jnp.full((2,), 3.0)}, "body": {"kernel": jnp.full((2,), 1.0),
                                                              "bias": jnp.full((2,), 1.0)},
            "frozen": {"kernel": jnp.ones((3,))}}
  trainable, frozen = optim.split_trainable(params, methods.get("full"), c)
  assert set(trainable) == {"head", "body"} and set(frozen) == {"frozen"}
  tx, _ = optim.make_optimizer(c, trainable, total_steps=10, warmup_steps=0)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), trainable)
  updates, _ = tx.update(grads, tx.init(trainable), trainable)
  new = jax.tree.map(lambda p, u: p + u, trainable, updates)
  np.testing.assert_allclose(new["body"]["kernel"], _adamw_step(1.0, 0.3, 0.1, 0.5), rtol=1e-5)
  np.testing.assert_allclose(new["body"]["bias"], _adamw_step(1.0, 0.3, 0.1, 1.0), rtol=1e-5)
  np.testing.assert_allclose(new["head"]["kernel"], _adamw_step(3.0, 0.3, 1.0, 0.0), rtol=1e-5)


def test_bad_policies_are_user_errors():
  c = config_lib.base_config("full").optim
  for bad in ((("^head/", "lr=fast"),), (("^head/",),), (("[", "frozen"),)):
    c.policies = bad
    with pytest.raises(UserError, match="config.optim.policies"):
      optim.parse_policies(c.policies)
  c.policies = ((".*", "frozen"),)
  with pytest.raises(UserError, match="no trainable parameter"):
    optim.split_trainable({"head": {"kernel": jnp.ones(2)}}, methods.get("full"), c)


def test_gradient_clipping_bounds_the_update_direction():
  c = config_lib.base_config("full").optim
  c.update(grad_clip=1.0, wd=0.0, lr=1.0, min_lr=1.0, b1=0.0, b2=0.0, eps=0.0)
  params = {"w": jnp.zeros((4,))}
  tx, _ = optim.make_optimizer(c, params, total_steps=1, warmup_steps=0)
  # With b1 = b2 = 0 Adam is sign(g): clipping must not change direction, only the pre-Adam norm.
  g = {"w": jnp.asarray([300.0, -400.0, 0.0, 0.0])}
  inner = optim.optax.clip_by_global_norm(1.0)
  clipped, _ = inner.update(g, inner.init(params))
  assert float(jnp.linalg.norm(clipped["w"])) == pytest.approx(1.0, rel=1e-5)
  updates, _ = tx.update(g, tx.init(params), params)
  np.testing.assert_allclose(updates["w"][:2], [-1.0, 1.0], rtol=1e-5)


@pytest.mark.parametrize("method,lo,hi", [("linear", 0.95, 1.15), ("full", 2.6, 3.4)])
def test_only_the_trainable_subtree_is_differentiated(tiny_config, method, lo, hi):
  """The compiled training step of a linear probe costs about one forward pass (no backward through the frozen
  backbone); full fine-tuning costs about three."""
  config = tiny_config(method, model=dict(variant="Ti/8", depth=2), train=dict(batch_size=8))
  model, m = methods.build_model(config)
  variables = jax.eval_shape(lambda: methods.init_variables(model, m, config, load_backbone=False))
  trainable, frozen = optim.split_trainable(variables["params"], m, config.optim)
  tx, sched = optim.make_optimizer(config.optim, trainable, 10, 1)
  state = jax.eval_shape(lambda t: train_state.create(t, {}, tx, 0), trainable)
  step = train_state.make_train_step(model, m, config, tx, sched)
  batch = {"image": jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((8,), jnp.int32)}
  train_macs = efficiency_lib.lowered_macs(step, state, frozen, batch)
  fwd_macs = efficiency_lib.lowered_macs(lambda v, x: model.apply(v, x)[0], variables, batch["image"])
  assert lo < train_macs / fwd_macs < hi


def test_bfloat16_compute_keeps_float32_parameters_and_state(tiny_config, fast_compile):
  config = tiny_config("adapter", model=dict(dtype="bfloat16"))
  model, m = methods.build_model(config)
  variables = methods.init_variables(model, m, config)
  trainable, frozen = optim.split_trainable(variables["params"], m, config.optim)
  tx, sched = optim.make_optimizer(config.optim, trainable, 10, 0)
  state = train_state.create(trainable, {}, tx, 0)
  step = jax.jit(train_state.make_train_step(model, m, config, tx, sched))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (8, 32, 32, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
  new, metrics = step(state, frozen, batch)
  assert np.isfinite(float(metrics["loss"])) and int(new.step) == 1
  assert {x.dtype for x in jax.tree.leaves((new.params, new.opt_state)) if x.ndim} == {jnp.dtype("float32")}
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trainable), jax.tree.leaves(new.params))]
  assert any(moved)


def test_sparse_tuning_complete_recipe_keeps_the_official_batch_conventions():
  """Complete datasets: 512 per device on one device, the last partial batch dropped (the official
  drop_last=True); VTAB-1k keeps it (16 steps per epoch on 1000 images at batch 64)."""
  _, complete = load_config_file("sparse_tuning_vtab", "task=cifar100,complete")
  config_lib.validate(complete)
  assert complete.train.batch_size == 512 and not complete.train.keep_last_partial
  _, vtab = load_config_file("sparse_tuning_vtab", "task=vtab/dtd")
  assert vtab.train.batch_size == 64 and vtab.train.keep_last_partial
