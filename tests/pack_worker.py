"""Runs `train_pack` in a fresh process, for tests that need their own device count or a hard kill.

  python tests/pack_worker.py '{"root": ..., "devices": 4, "kill_before_step": 6, "runs": [{"seed": 0,
                                 "optim": {"lr": 1e-3}}, ...], "blocks": {"train": {"steps": 8}}}'

Each run is the tiny adapter config (conftest) with `blocks`, then its own `seed` and config blocks; run i writes
`<root>/run<i>`, the pack `<root>/pack`. `devices` forces that many host CPU devices; `kill_before_step` sends
SIGKILL when the pack's batch of that step is about to be fed (as tests/train_worker.py does).
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
from vit_adapt.train import packed  # noqa: E402

assert jax.device_count() == int(spec.get("devices") or 1), jax.devices()
jax.config.update("jax_disable_most_optimizations", True)  # tiny models: compile time dominates

if spec.get("kill_before_step"):
  feed = mesh_lib.global_batch
  fed = [0]

  def feed_or_die(batch, sharding):
    if "mask" not in batch:  # a training batch (evaluation batches carry a mask)
      fed[0] += 1
      if fed[0] == spec["kill_before_step"]:
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    return feed(batch, sharding)

  mesh_lib.global_batch = feed_or_die

configs = []
for run in spec["runs"]:
  c = make_tiny_config(spec.get("method", "adapter"), **spec.get("blocks", {}))
  for block, values in run.items():
    if block == "seed":
      c.seed = values
    else:
      c[block].update(values)
  configs.append(c)
root = spec["root"]
results = packed.train_pack(configs, [os.path.join(root, f"run{i}") for i in range(len(configs))],
                            os.path.join(root, "pack"))
print("RESULTS " + json.dumps([r and {k: r[k] for k in ("top1", "eval_loss", "final_train_loss")}
                               for r in results]))
