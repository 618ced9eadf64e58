"""What a run leaves for comparing and re-running runs: TensorBoard hyperparameters of its config, and JAX's
persistent compilation cache that a second process of the same programs reads."""

import glob
import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.plugins.hparams import plugin_data_pb2

from vit_adapt import train
from vit_adapt.cli import compile_cache
from vit_adapt.train import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _events_hparams(workdir):
  """{name: value} of the hparams summaries in the run's TensorBoard events files."""
  found = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name != "hparams":
          continue
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for name, v in data.session_start_info.hparams.items():
          found[name] = getattr(v, v.WhichOneof("kind"))
  return found


def _assert_logged(logged, config):
  expected = writers.hparams(config)
  assert set(logged) == set(expected) and len(logged) > 40
  for name, value in expected.items():  # TensorBoard stores numbers as floats
    assert logged[name] == (float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                            else value), name
  assert logged["method.name"] == config.method.name and logged["optim.policies"] == "()"


def test_writer_stores_the_flattened_config_as_hparams(tiny_config, tmp_path):
  config = tiny_config("lora")
  writer = writers.create_writer(str(tmp_path))
  writer.write_hparams(writers.hparams(config))
  writer.flush()
  _assert_logged(_events_hparams(tmp_path), config)


@pytest.mark.slow
def test_every_run_writes_its_config_as_tensorboard_hparams(tiny_config, fast_compile, tmp_path):
  config = tiny_config("lora", train=dict(steps=1))
  train.train_and_evaluate(config, str(tmp_path))
  _assert_logged(_events_hparams(tmp_path), config)


def test_cache_directory_from_flag_environment_or_default(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  assert compile_cache.resolve(None) == str(tmp_path / "xdg" / "vit_adapt" / "jax")
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.resolve(None) == str(tmp_path / "env")
  assert compile_cache.resolve(str(tmp_path / "flag")) == str(tmp_path / "flag")
  assert compile_cache.resolve("off") is None
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.resolve(None) is None


# A fresh process that turns the cache on as `main` does, compiles one program and reports the cache's verdict
# (jax's monitoring events, not timings).
_CHILD = """
import json, sys
import jax, jax.numpy as jnp
from vit_adapt.cli import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
compile_cache.enable(sys.argv[1], min_compile_time_s=0.0)
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({"hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _child(cache):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _CHILD, cache], env=env, cwd=ROOT, capture_output=True, text=True,
                       check=True, timeout=300).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_a_second_process_reads_the_compilation_cache(tmp_path):
  cache = str(tmp_path / "cache")
  first = _child(cache)
  entries = os.listdir(cache)
  assert first["hits"] == 0 and first["misses"] >= 1 and entries
  second = _child(cache)
  assert second["hits"] >= 1 and second["misses"] == 0
  assert sorted(os.listdir(cache)) == sorted(entries)  # nothing new was compiled and written
  off = _child("off")
  assert off["hits"] == 0 and sorted(os.listdir(cache)) == sorted(entries)
