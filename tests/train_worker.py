"""Runs `train_and_evaluate` in a fresh process, for tests that need their own device count or a hard kill.

  python tests/train_worker.py '{"workdir": ..., "method": "adapter", "devices": 4, "kill_before_step": 6,
                                  "blocks": {"train": {"steps": 8}}}'

`devices` forces that many host CPU devices (set before JAX starts). `kill_before_step` sends SIGKILL to this
process when the batch of that step is about to be fed (after a short pause that lets the asynchronous checkpoint
writes of earlier steps finish), i.e. mid-training, between checkpoints.
"""

import json
import os
import signal
import sys
import time

spec = json.loads(sys.argv[1])
if spec.get("devices"):
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(spec['devices'])}"
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]  # conftest's tiny configs; the checkout under test

import jax  # noqa: E402

from conftest import make_tiny_config  # noqa: E402
from vit_adapt.train import mesh as mesh_lib  # noqa: E402
from vit_adapt import train  # noqa: E402

assert jax.device_count() == int(spec.get("devices") or 1), jax.devices()
jax.config.update("jax_disable_most_optimizations", True)  # tiny models: compile time dominates

if spec.get("kill_before_step"):
  feed = mesh_lib.global_batch
  fed = [0]

  def feed_or_die(batch, sharding):
    fed[0] += 1  # the training loop feeds one batch per step; evaluation only runs after the last step
    if fed[0] == spec["kill_before_step"]:
      time.sleep(1.0)
      os.kill(os.getpid(), signal.SIGKILL)
    return feed(batch, sharding)

  mesh_lib.global_batch = feed_or_die

config = make_tiny_config(spec.get("method", "adapter"), **spec.get("blocks", {}))
results = train.train_and_evaluate(config, spec["workdir"])
print("RESULTS " + json.dumps({k: results[k] for k in ("top1", "eval_loss", "final_train_loss", "steps")}))
