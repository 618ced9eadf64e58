"""The efficiency report: GMACs of the inference program (dense ViT-B/16 at 224 reads 17.6, from
shapes alone), trainable parameter counts per method, the report's fields, and the CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from vit_adapt import tasks
from vit_adapt.train import optim
from vit_adapt.train import step as train_step
from vit_adapt import config_lib, methods
from vit_adapt.efficiency import report as efficiency

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dense_vit_b16_reads_17_6_gmacs_from_shapes_only():
  config = config_lib.base_config("linear")
  config.dataset.num_classes = 1000
  model, method = methods.build_model(config)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3), jnp.float32))
  gmacs = efficiency.gmacs_per_image(model, abstract, 224)
  assert round(gmacs, 1) == 17.6
  # The analytic count: embedding + 12 blocks (qkv/out, MLP, attention matmuls) + head.
  n, d, m = 197, 768, 3072
  blocks = 12 * (n * 4 * d * d + n * 2 * d * m + 2 * n * n * d)
  analytic = (196 * 16 * 16 * 3 * d + blocks + d * 1000) / 1e9
  assert gmacs == pytest.approx(analytic, rel=2e-3)


def test_report_fields_and_trainable_counts(tiny_config, fast_compile):
  config = tiny_config("lora", efficiency=dict(enabled=True))
  model, method = methods.build_model(config)
  variables = methods.init_variables(model, method, config)
  trainable, _ = optim.split_trainable(variables["params"], method, config.optim)
  memory = train_step.train_step_memory(config, model, method, variables)
  r = efficiency.report(config, model, variables, example_input=tasks.for_config(config).example_input,
                        trainable=trainable, train_memory_bytes=memory)
  d, rank = 32, config.method.rank
  assert r["trainable_params"] == 2 * 2 * rank * 2 * d + (d * 10 + 10)
  assert r["total_params"] > r["trainable_params"]
  assert r["gmacs_per_image"] > 0 and r["gmacs_source"] == "program"
  assert r["throughput_images_per_s"] > 0 and r["batch_size"] == 8
  assert r["peak_train_memory_bytes"] > 0 and r["dtype"] == "float32" and "cpu" in r["device"]
  # Per-example statistics of an input-dependent method replace the compiled count by their average.
  r2 = efficiency.report(config, model, variables, example_input=tasks.for_config(config).example_input,
                        trainable=trainable, eval_stats={"gmacs": 0.5},
                         measure_throughput=False, train_memory_bytes=1)
  assert r2["gmacs_per_image"] == 0.5 and r2["gmacs_source"] == "eval_average"
  assert r2["gmacs_program"] == r["gmacs_per_image"]


def test_bfloat16_compute_counts_the_same_macs(tiny_config, fast_compile):
  config = tiny_config("adapter")
  model, method = methods.build_model(config)
  variables = methods.init_variables(model, method, config)
  config.model.dtype = "bfloat16"
  model16, _ = methods.build_model(config)
  g32 = efficiency.gmacs_per_image(model, variables, 32)
  g16 = efficiency.gmacs_per_image(model16, variables, 32)
  assert g16 == pytest.approx(g32, rel=1e-6)


def test_cli_writes_the_json_report(tmp_path):
  out = tmp_path / "report.json"
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  # The real (non-demo) recipe with a tiny backbone: no weights file is needed without --checkpoint.
  cmd = [sys.executable, "-m", "vit_adapt.efficiency", "--config=configs/adapter_vtab.py:task=vtab/dtd",
         "--config.model.variant=mu/8", "--config.model.depth=2", "--config.model.image_size=32",
         "--config.efficiency.batch_size=4", "--config.efficiency.repeats=2", "--config.train.batch_size=4",
         f"--output={out}"]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(out.read_text())
  for key in ("gmacs_per_image", "trainable_params", "throughput_images_per_s", "batch_size", "device",
              "peak_train_memory_bytes", "dtype"):
    assert key in report, key
  assert report["method"] == "adapter" and report["task"] == "vtab/dtd" and report["batch_size"] == 4
  d, r = 32, 64  # the recipe's bottleneck 64
  assert report["trainable_params"] == 2 * (2 * d * r + r + d) + (d * 47 + 47)
