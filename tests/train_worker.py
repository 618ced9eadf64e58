"""Runs `train_and_evaluate` in a fresh process, for tests that need their own device count or a hard kill.

  python tests/train_worker.py '{"workdir": ..., "method": "adapter", "devices": 4, "kill_before_step": 6,
                                  "blocks": {"train": {"steps": 8}}}'

`devices` forces that many host CPU devices (set before JAX starts). `kill_before_step` sends SIGKILL to this
process when the batch of that step is about to be fed (after a short pause that lets the asynchronous checkpoint
writes of earlier steps finish), i.e. mid-training, between checkpoints.

Multi-process (`"process": {"id": i, "count": n, "port": p}`): process i of an n-process job whose coordinator
listens on localhost:p, configured as a user would, through JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID (the trainer initialises `jax.distributed`). `devices` is then per process. An audit hook records
the files this process opens for writing or renames (`"WRITES [...]"` on stdout). `record_labels` prints the
labels of the training batches this process fed (`"FED [...]"`).

`emulate_hosts` (one process): the training batches are the concatenation of what that many hosts' pipelines
(`process_index=p, process_count=n`) feed, in host order: the global batch an n-process job assembles.
"""

import json
import os
import signal
import sys
import time

spec = json.loads(sys.argv[1])
if spec.get("devices"):
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(spec['devices'])}"
if spec.get("process"):
  os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{spec['process']['port']}",
                    JAX_NUM_PROCESSES=str(spec["process"]["count"]), JAX_PROCESS_ID=str(spec["process"]["id"]))
  writes = set()

  def audit(event, args):
    if event == "open" and not isinstance(args[0], int) and (args[2] or 0) & (os.O_WRONLY | os.O_RDWR):
      writes.add(os.path.abspath(os.fsdecode(os.fspath(args[0]))))
    elif event in ("os.rename", "os.replace"):
      writes.add(os.path.abspath(os.fsdecode(os.fspath(args[1]))))

  sys.addaudithook(audit)
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]  # conftest's tiny configs; the checkout under test

import jax  # noqa: E402
import numpy as np  # noqa: E402

from conftest import make_tiny_config  # noqa: E402
from vit_adapt.train import mesh as mesh_lib  # noqa: E402
from vit_adapt import train  # noqa: E402

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

if spec.get("record_labels"):  # the labels of every training batch this process feeds (`"FED [...]"` on stdout)
  fed_labels = []
  feed_and_record = mesh_lib.global_batch

  def feed_and_record_labels(batch, sharding):
    if "mask" not in batch:  # evaluation batches carry a mask
      fed_labels.append(np.asarray(batch["label"]).tolist())
    return feed_and_record(batch, sharding)

  mesh_lib.global_batch = feed_and_record_labels

if spec.get("emulate_hosts"):
  import dataclasses

  from vit_adapt import tasks
  from vit_adapt.data import pipeline

  class HostsConcat:
    """n hosts' training streams as one iterator of their concatenated batches (checkpointable like grain's)."""

    def __init__(self, config, *, seed):
      n = spec["emulate_hosts"]
      self._its = [pipeline.train_iterator(config, seed=seed, process_index=p, process_count=n) for p in range(n)]

    def __iter__(self):
      return self

    def __next__(self):
      parts = [next(it) for it in self._its]
      return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> bytes:
      return json.dumps([it.get_state() for it in self._its]).encode()

    def set_state(self, state: bytes) -> None:
      for it, s in zip(self._its, json.loads(state)):
        it.set_state(s)

    def start_prefetch(self) -> None:
      pass

  for_config = tasks.for_config
  tasks.for_config = lambda c: dataclasses.replace(for_config(c), train_iterator=HostsConcat)

config = make_tiny_config(spec.get("method", "adapter"), **spec.get("blocks", {}))
results = train.train_and_evaluate(config, spec["workdir"])
per_process = int(spec.get("devices") or 1)
assert jax.local_device_count() == per_process, jax.local_devices()
assert jax.device_count() == per_process * int((spec.get("process") or {}).get("count", 1)), jax.devices()
if spec.get("process"):
  print("WRITES " + json.dumps(sorted(writes)))
if spec.get("record_labels"):
  print("FED " + json.dumps(fed_labels))
print("RESULTS " + json.dumps({k: results[k] for k in ("top1", "eval_loss", "final_train_loss", "steps")}))
