"""The segmentation demo configs' efficiency report is per evaluated image (windows x one window's program)."""

import importlib.util
import os

import jax
import pytest

from vit_adapt import methods
from vit_adapt.efficiency import report as efficiency
from vit_adapt.tasks import segmentation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_efficiency_is_per_image_from_one_window():
  config = _config("adapter_ade20k", "demo")
  config.model.update(variant="mu/8", depth=2, feature_blocks=(0, 0, 1, 1), head_channels=8, aux_channels=8)
  config.segmentation.eval_size = (48, 80)  # 2 x 4 windows of 32 px at stride 16
  model, _ = methods.build_model(config)
  x = segmentation.example_input(config, 1)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros(x.shape), train=False))
  window = efficiency.gmacs_per_example(model, variables, x)
  out = efficiency.report(config, model, variables, example_input=segmentation.example_input,
                          trainable=variables["params"], train_memory_bytes=0, measure_throughput=False,
                          per_image=segmentation.efficiency)
  assert out["windows_per_image"] == 8
  assert out["gmacs_per_window"] == pytest.approx(window)
  assert out["gmacs_per_image"] == pytest.approx(8 * window)
  assert out["gmacs_backbone_per_image"] + out["gmacs_head_per_image"] == pytest.approx(8 * window)
  assert 0 < out["gmacs_backbone_per_image"] < out["gmacs_per_image"]
