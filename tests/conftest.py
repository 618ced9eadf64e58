"""Shared test fixtures: tiny experiment configs that train in seconds on one CPU core.

The default test process stays single-device; tests that need several devices (data parallelism) run a
subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=N` (see `train_worker.py`).
"""

import jax
import pytest

from vit_adapt import config_lib


def shrink(c):
  """A config's model and schedule made tiny in place: a 2-block width-32 ViT at 32 px, 2 steps of batch 8."""
  c.model.update(variant="mu/8", image_size=32, depth=2, init="")
  c.train.update(batch_size=8, steps=2, warmup_epochs=0, log_every_steps=1, eval_every_epochs=0,
                 checkpoint_every_steps=0)
  c.eval.batch_size = 40
  c.efficiency.update(enabled=False, batch_size=8, repeats=2)
  c.dataset.update(num_threads=2, prefetch=2)


def make_tiny_config(method: str = "adapter", arg: str = "demo", **blocks):
  """The `demo` config (embedded digits) shrunk to a 2-block width-32 ViT at 32 px, 2 steps of batch 8.

  `blocks` update config sub-blocks, e.g. `train=dict(steps=5)`, `method=dict(bottleneck=4)`.
  """
  c, _ = config_lib.make_config(method, arg)
  shrink(c)
  if "bottleneck" in c.method:
    c.method.bottleneck = 8
  for name, values in blocks.items():
    c[name].update(values)
  return c


@pytest.fixture
def tiny_config():
  return make_tiny_config


@pytest.fixture
def fast_compile():
  """XLA without most optimisations: tiny models compile several times faster (numerics stay float32)."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
