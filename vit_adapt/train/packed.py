"""Packed training: K runs that agree on everything that fixes array shapes, trained in ONE compiled program.

`train_pack(configs, workdirs, pack_dir)` is the library entry point (`python -m vit_adapt.pack` and
`python -m vit_adapt.sweep --pack=K` call it). The runs' trainable trees, optimizer states, RNG keys and
non-parameter collections are stacked on a leading run axis and the trainer's own step
(`train.hparams.train_step`: loss, gradients, AdamW, schedule, policies) runs over it; so does the trainer's
evaluation step. On CPU with the run axis on one device the runs go one after another (`lax.map`: each run is
the program of the run alone, bitwise its results); on accelerators and over several devices they are
`jax.vmap`ped (batched into each operation: equal up to float rounding). What the runs may differ in (`pack_key`
is everything else):

  * values that enter on the host: `seed` (initial parameters, dropout keys, data order), the label smoothing
    of the training batches, and a method's `init_fields` (initial values of its parameters): each run
    initialises its own state and reads its own batches;
  * values that enter the program as numbers, per run: `optim.lr`, `optim.min_lr`, `optim.wd` (zero or not must
    agree) and a method's `traced_fields` (the adapter's scale, DyT's rate target and loss weights...). A run of
    its own passes the same fields to its programs the same way (train/hparams.py).

The frozen backbone is shared by every run (one copy, an ordinary argument of the step) when the runs' frozen
weights are equal (a pre-trained `model.init`); a random backbone drawn from each run's seed (the demo) differs
per run and is stacked like the trainable trees.

Each run writes the trainer's workdir (`config.json`, `metrics.jsonl`, TensorBoard events, `run.json`, `model/`,
`results.json` with a `pack` entry) with the numbers it has alone: bitwise on CPU (tests/test_pack.py; the
demo's 8-run grid over its full 440 steps, docs/sweeps.md). Faults stay per run: a run whose loss (or state)
turns non-finite keeps its last finite state, stops, and gets `WORKDIR/error.json` saying why instead of
results; the others go on. The pack checkpoints its stacked state and
every run's data iterator together under `pack_dir/checkpoints`, so a killed pack resumes exactly.

Devices: a `('runs', 'data')` mesh over every device; the run axis is sharded over `gcd(K, devices)` devices
(a pack of 8 on 8 devices is one run per device, in one program) and each run's batch over the rest.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_adapt import config_lib, methods, tasks
from vit_adapt.efficiency import report as efficiency
from vit_adapt.errors import UserError
from vit_adapt.models import params as params_lib
from vit_adapt.train import checkpoints as train_checkpoints
from vit_adapt.train import driver, evaluate, hparams, loop, optim
from vit_adapt.train import mesh as mesh_lib
from vit_adapt.train import results as results_lib
from vit_adapt.train import step as train_state
from vit_adapt.train import workdir as workdir_lib
from vit_adapt.train import writers as reporting

ERROR_FILE = "error.json"
# Config fields every packed run reads on the host (its own initial state and batches).
HOST_FIELDS = ("seed", "dataset.label_smoothing")


# ------------------------------------------------------------------------------------------------ what packs
def free_fields(config) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """-> (host fields, value fields): the dotted config fields packed runs may differ in (the value fields are
  arguments of the programs of every run, packed or alone: train/hparams.py)."""
  method = methods.get(config.method.name)
  host = HOST_FIELDS + tuple(f"method.{f}" for f in method.init_fields)
  return host, hparams.candidate_fields(config)


def ineligible_reason(config) -> str | None:
  """Why a run cannot be packed (None = it can)."""
  if jax.process_count() > 1:
    return "a packed sweep runs in one process"
  return None


def pack_key(config) -> str:
  """Everything runs of one pack must agree on, as a canonical JSON string: the config without its free
  fields, plus whether the weight decay and the label smoothing are zero (that changes the optimizer's and the
  batches' structure)."""
  host, traced = free_fields(config)
  key = {k: v for k, v in hparams.flat(config).items() if k not in host + traced}
  key["optim.wd == 0"] = config.optim.wd == 0
  key["dataset.label_smoothing == 0"] = config.dataset.label_smoothing == 0
  return json.dumps(key, sort_keys=True, default=str)


def _varying(configs, fields) -> list[str]:
  flats = [hparams.flat(c) for c in configs]
  return [f for f in fields if len({json.dumps(fl.get(f)) for fl in flats}) > 1]


# ------------------------------------------------------------------------------------------------ state
@flax.struct.dataclass
class PackState:
  """The pack's training state: the runs' `TrainState`s stacked, the pack's step, and per run the step its
  training stopped at because it turned non-finite (0 = training)."""
  step: jax.Array        # int32 scalar
  runs: train_state.TrainState
  failed_at: jax.Array   # int32 (K,)

  # What `TrainCheckpoints.save` checks before writing (a stopped run keeps its last finite state).
  params = property(lambda self: self.runs.params)
  opt_state = property(lambda self: self.runs.opt_state)
  model_state = property(lambda self: self.runs.model_state)

  def to_dict(self) -> dict:
    return {"step": self.step, "runs": self.runs.to_dict(), "failed_at": self.failed_at}

  @classmethod
  def from_dict(cls, d: dict) -> "PackState":
    return cls(step=d["step"], runs=train_state.TrainState.from_dict(d["runs"]), failed_at=d["failed_at"])


class PackIterator:
  """The runs' training iterators as one checkpointable iterator (grain's checkpoint handler stores the bytes
  of `get_state`): `next` -> the list of the runs' batches."""

  def __init__(self, iterators: Sequence[Any]):
    self.iterators = list(iterators)

  def __next__(self) -> list:
    return [next(it) for it in self.iterators]

  def get_state(self) -> bytes:
    states = []
    for it in self.iterators:
      s = it.get_state()
      states.append({"bytes": s.decode()} if isinstance(s, bytes) else {"state": s})
    return json.dumps(states).encode()

  def set_state(self, state: bytes) -> None:
    for it, s in zip(self.iterators, json.loads(state)):
      it.set_state(s["bytes"].encode() if "bytes" in s else s["state"])

  def start_prefetch(self) -> None:
    for it in self.iterators:
      if hasattr(it, "start_prefetch"):
        it.start_prefetch()


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _trees_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)))


# ------------------------------------------------------------------------------------------------ mesh
def make_mesh(num_runs: int, devices=None) -> Mesh:
  """('runs', 'data'): the run axis over gcd(K, devices) devices, each run's batch over the others."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  runs = math.gcd(num_runs, devices.size)
  auto = jax.sharding.AxisType.Auto  # shardings propagate from the jit boundary, as in train/mesh.py
  return Mesh(devices.reshape(runs, devices.size // runs), ("runs", "data"), axis_types=(auto, auto))


def _reading_config(config, num_runs: int) -> ml_collections.ConfigDict:
  """A packed run reads with its `dataset.num_threads` shared among the K runs, and with none (in the step loop's
  thread, which overlaps the running step: dispatch is asynchronous) when its share is under 2. K x T threads
  contend for the GIL; 8 demo iterators took 200 ms of host time per pack step with 8 or 1 threads each, 65 ms
  with none (2 CPU cores). Same batches whatever the threads; the run's recorded config is unchanged."""
  threads = int(config.dataset.num_threads) // num_runs
  out = ml_collections.ConfigDict(config.to_dict())
  out.dataset.num_threads = threads if threads >= 2 else 0
  return out


def _check_batch(batch_size: int, key: str, mesh: Mesh) -> None:
  n = mesh.shape["data"]
  if batch_size % n:
    raise UserError(f"{key}={batch_size} is not divisible by the {n} devices that split each run's batch "
                    f"(mesh {dict(mesh.shape)}): set {key} to a multiple of {n}, or pack a multiple of "
                    f"{mesh.devices.size} runs.")


# ------------------------------------------------------------------------------------------------ steps
def make_pack_step(config, method, task, total_steps: int, warmup_steps: int, frozen_axis, *, exact: bool):
  """-> pack_step(pack_state, frozen, batches, values) -> (pack_state, metrics (K,)): every run's step is the
  trainer's (`hparams.train_step`), over the run axis (`hparams.over_runs`: one run after another when `exact`,
  else vmapped)."""
  step = hparams.train_step(config, method, task, total_steps, warmup_steps)

  def run_step(state, frozen, batch, values):
    new, metrics = step(state, frozen, batch, values)
    ok = jnp.isfinite(metrics["loss"]) & train_state.all_finite((new.params, new.opt_state, new.model_state))
    return new, metrics, ok

  over_runs = hparams.over_runs(run_step, (0, frozen_axis, 0, 0), exact=exact)

  def pack_step(pack: PackState, frozen, batches, values):
    new, metrics, ok = over_runs(pack.runs, frozen, batches, values)
    ok = ok & (pack.failed_at == 0)
    # A run that turned non-finite keeps its last finite state (and so does a checkpoint); the others go on.
    runs = jax.tree.map(lambda n, o: jnp.where(ok.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, pack.runs)
    failed_at = jnp.where((pack.failed_at == 0) & ~ok, pack.step + 1, pack.failed_at)
    return PackState(step=pack.step + 1, runs=runs, failed_at=failed_at), metrics

  return pack_step


def make_pack_eval_step(config, method, task, frozen_axis, *, exact: bool):
  """-> eval_step(trainables, frozen, model_states, values, batch) -> sums (K, ...): the trainer's evaluation
  step per run, on one shared batch."""
  return hparams.over_runs(hparams.eval_step(config, method, task), (0, frozen_axis, 0, 0, None), exact=exact)


def exact_runs(mesh: Mesh) -> bool:
  """Whether the pack runs its runs one after another (bitwise the runs alone): on CPU with the run axis on one
  device. Accelerators, and a run axis over several devices, batch the runs (`jax.vmap`): equal up to float
  rounding (docs/sweeps.md)."""
  return mesh.shape["runs"] == 1 and mesh.devices.flat[0].platform == "cpu"


# ------------------------------------------------------------------------------------------------ training
def check_pack(configs) -> list[str]:
  """Validates the configs of one pack; -> the value fields (train/hparams.py) whose values differ between its
  runs."""
  if len(configs) < 1:
    raise UserError("a pack needs at least one run.")
  for c in configs:
    config_lib.validate(c)
    reason = ineligible_reason(c)
    if reason:
      raise UserError(f"cannot pack run of {c.dataset.name} ({c.method.name}): {reason}.")
  keys = [pack_key(c) for c in configs]
  if len(set(keys)) != 1:
    a, b = json.loads(keys[0]), json.loads(next(k for k in keys if k != keys[0]))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    raise UserError(f"these runs cannot share one program: their configs differ in {diff[:6]} (packed runs may "
                    f"differ only in {', '.join(sum(free_fields(configs[0]), ()))}). Pack them separately.")
  if len({hparams.value_fields(c) for c in configs}) != 1:
    raise UserError("these runs cannot share one program: a field of "
                    f"{', '.join(hparams.candidate_fields(configs[0]))} is a number in some runs and not in others "
                    "(or the weight decay is zero in some). Pack them separately.")
  return _varying(configs, free_fields(configs[0])[1])


def _claim_pack(pack_dir: str, configs) -> None:
  """The pack directory holds the stacked checkpoint of exactly these runs (in this order)."""
  path = os.path.join(pack_dir, "pack_run.json")
  mine = [workdir_lib.fingerprint(c) for c in configs]
  try:
    with open(path) as f:
      theirs = json.load(f).get("fingerprints")
  except (OSError, ValueError):
    theirs = None
  ckpts = os.path.join(pack_dir, "checkpoints")
  if theirs is not None and theirs != mine and os.path.isdir(ckpts) and os.listdir(ckpts):
    raise UserError(f"the pack directory {pack_dir} holds the checkpoints of another pack (other runs or configs). "
                    "Delete it (its runs restart from scratch) or use another pack directory.")
  reporting.write_json(path, {"fingerprints": mine})


def train_pack(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str], pack_dir: str, *,
               devices=None) -> list[dict | None]:
  """Trains the runs in one program; -> each run's results (None for a run that stopped non-finite).

  Re-running resumes the pack from `pack_dir/checkpoints`. `devices` (default: all) form the pack's mesh.
  """
  start = time.time()
  configs = list(configs)
  workdirs = [os.path.abspath(w) for w in workdirs]
  if len(workdirs) != len(configs) or len(set(workdirs)) != len(workdirs):
    raise UserError("train_pack needs one distinct workdir per config.")
  traced = check_pack(configs)
  c0, k = configs[0], len(configs)
  mesh = make_mesh(k, devices)
  _check_batch(c0.train.batch_size, "config.train.batch_size", mesh)
  _check_batch(c0.eval.batch_size, "config.eval.batch_size", mesh)
  task = tasks.for_config(c0)
  num_train = loop.preflight(c0, task)
  lengths = optim.schedule_lengths(c0, num_train)
  pack_dir = os.path.abspath(pack_dir)
  workdir_lib.check_writable(pack_dir)
  locks = [workdir_lib.Lock(pack_dir)]
  try:
    previous = []
    for c, w in zip(configs, workdirs):
      workdir_lib.check_writable(w)
      locks.append(workdir_lib.Lock(w))
      previous.append(workdir_lib.claim(w, c, restart=False))
    _claim_pack(pack_dir, configs)
    return _train_pack(configs, workdirs, pack_dir, traced, mesh, task, num_train, lengths, previous, start)
  finally:
    for lock in locks:
      lock.release()


def _train_pack(configs, workdirs, pack_dir, traced, mesh, task, num_train, lengths, previous, start):
  c0, k = configs[0], len(configs)
  steps_per_epoch, total_steps, warmup_steps = lengths
  exact = exact_runs(mesh)
  logging.info("Pack of %d runs on mesh %s, %s; differing per run: %s", k, dict(mesh.shape),
               "one after another" if exact else "vmapped", traced or "nothing")
  writers = []
  for c, w in zip(configs, workdirs):
    reporting.write_json(os.path.join(w, "config.json"), c.to_dict())
    writers.append(reporting.create_writer(w))

  # ---------------------------------------------------------------------------------------------- runs
  # Each run is initialised exactly as the trainer initialises it alone (its own model for its init fields).
  iterators, trainables, model_states, frozens, models = [], [], [], [], {}
  for c, w in zip(configs, workdirs):
    model, method = methods.build_model(c)
    model = models.setdefault(model, model)  # equal models: one instance, one compiled init
    variables = dict(methods.init_variables(model, method, c))
    params = variables.pop("params")
    it = task.train_iterator(_reading_config(c, len(configs)), seed=c.seed)
    if method.feature_cache is not None:
      cached = method.feature_cache.iterator(c, w, model, {"params": params, **variables})
      it = cached if cached is not None else it
    iterators.append(it)
    trainable, frozen = optim.split_trainable(params, method, c.optim)
    trainables.append(jax.device_get(trainable))
    model_states.append(jax.device_get(variables))
    # One host copy of equal frozen trees (a pre-trained backbone), one per run when they differ (random).
    frozens.append(frozens[0] if frozens and _trees_equal(frozen, frozens[0]) else frozen)
  # The trainer's `create` per run, vmapped over the seeds: one compiled program for the pack. The optimizer
  # state's initial value does not depend on the values runs differ in (learning rate, weight decay).
  tx, _ = optim.make_optimizer(c0.optim, trainables[0], total_steps, warmup_steps)
  states = jax.vmap(lambda t, m, s: train_state.create(t, m, tx, s))(
      _stack(trainables), _stack(model_states), np.asarray([c.seed for c in configs], np.int32))
  del trainables, model_states
  shared = all(f is frozens[0] for f in frozens)
  logging.info("Frozen backbone: %s", "one copy shared by every run" if shared else "one per run (they differ)")
  frozen_axis = None if shared else 0
  runs_sh, repl = NamedSharding(mesh, P("runs")), NamedSharding(mesh, P())
  batch_sh = NamedSharding(mesh, P("runs", "data"))
  frozen = jax.device_put(frozens[0] if shared else _stack(frozens), repl if shared else runs_sh)
  pack = PackState(step=jnp.zeros((), jnp.int32), runs=jax.device_get(states), failed_at=np.zeros((k,), np.int32))
  pack_sh = PackState(step=repl, runs=jax.tree.map(lambda _: runs_sh, pack.runs), failed_at=runs_sh)
  pack = jax.device_put(pack, pack_sh)
  values = jax.device_put(_stack([hparams.values_of(c, hparams.value_fields(c0)) for c in configs]), runs_sh)
  del states, frozens
  data = PackIterator(iterators)

  # ---------------------------------------------------------------------------------------------- restore
  ckpts = train_checkpoints.TrainCheckpoints(os.path.join(pack_dir, "checkpoints"), keep=c0.train.keep_checkpoints)
  pack, start_step = driver.restore(ckpts, pack, data, total_steps, "pack")

  pack_step = make_pack_step(c0, method, task, total_steps, warmup_steps, frozen_axis, exact=exact)
  frozen_sh = repl if shared else runs_sh
  step_fn = driver.CompiledStep(jax.jit(pack_step, in_shardings=(pack_sh, frozen_sh, batch_sh, runs_sh),
                                       out_shardings=(pack_sh, runs_sh), donate_argnums=0))
  eval_fn = jax.jit(make_pack_eval_step(c0, method, task, frozen_axis, exact=exact),
                    in_shardings=(runs_sh, frozen_sh, runs_sh, runs_sh, NamedSharding(mesh, P("data"))),
                    out_shardings=runs_sh)
  reported: set[int] = set()  # runs whose failure is already written
  failed_at = np.asarray(jax.device_get(pack.failed_at))

  def _alive(step: int) -> list[int]:
    return [i for i in range(k) if failed_at[i] == 0 or failed_at[i] > step]

  def wall(i: int) -> float:  # the pack's time, shared equally by its runs
    return previous[i] + (time.time() - start) / k

  def run_eval(pack, step: int) -> list[dict]:
    totals: dict = {}
    for batch in task.eval_batches(c0, c0.dataset.eval_split):
      batch = mesh_lib.global_batch(batch, NamedSharding(mesh, P("data")))
      evaluate.accumulate(totals, jax.device_get(
          eval_fn(pack.runs.params, frozen, pack.runs.model_state, values, batch)))
    results = [evaluate.summarize(task, {key: v[i] for key, v in totals.items()}) for i in range(k)]
    for i in _alive(step):
      r = results[i]
      scalars = {key: v for key, v in r.items() if key not in ("stats", "num_examples")}
      scalars.update({f"stats/{key}": v for key, v in r["stats"].items()})
      writers[i].write_scalars(step, {f"eval/{key}": v for key, v in scalars.items()})
    logging.info("Eval at step %d: %s %s", step, task.primary_metric,
                 [round(float(r[task.primary_metric]), 4) for r in results])
    return results

  # ---------------------------------------------------------------------------------------------- loop
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                             writer=metric_writers.MultiWriter(writers))
  last_train: list[dict] = [{} for _ in range(k)]

  def flush(pack, step: int, pending: list) -> None:
    nonlocal failed_at
    failed_at = np.asarray(jax.device_get(pack.failed_at))
    _report_failures(configs, workdirs, failed_at, reported)
    if not pending:
      return
    fetched = jax.device_get(pending)
    first = step - len(fetched) + 1
    for i in range(k):
      rows = [{key: v[i] for key, v in m.items()} for s, m in enumerate(fetched, first)
              if failed_at[i] == 0 or s < failed_at[i]]
      if not rows or (failed_at[i] and failed_at[i] <= step):
        continue  # a run that stopped in this window logs nothing more (a run of its own stops with an error)
      last_train[i] = {f"train/{key}": float(np.mean([r[key] for r in rows])) for key in rows[0]}
      writers[i].write_scalars(step, last_train[i])
      workdir_lib.write_run_file(workdirs[i], configs[i], wall(i))

  def next_batch():
    host = next(data)
    return mesh_lib.global_batch({key: np.stack([b[key] for b in host]) for key in host[0]}, batch_sh)

  pack, last_eval = driver.run_steps(
      pack, start_step=start_step, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      train_config=c0.train, step=lambda pack: step_fn(pack, frozen, next_batch(), values), flush=flush,
      evaluate=run_eval, ckpts=ckpts, data=data, progress=progress)

  # ---------------------------------------------------------------------------------------------- report
  if step_fn.peak_bytes is None:  # resumed after the last step: compiled (never run) for its memory analysis
    step_fn.compiled(pack, frozen, next_batch(), values)
  # The training memory reported per run is its share of the packed step's (per device, over the runs each device
  # holds; a shared frozen backbone is split among them), read from the program the pack compiled anyway: a
  # separate solo step compiled only to measure it cost ~20 s per pack on CPU. Results say so in
  # `peak_train_memory_source`.
  runs_per_device = k // mesh.shape["runs"]
  memory = step_fn.peak_bytes // runs_per_device
  memory_source = f"packed step / {runs_per_device} runs per device"
  failed_at = np.asarray(jax.device_get(pack.failed_at))
  _report_failures(configs, workdirs, failed_at, reported)
  runs = jax.device_get(pack.runs)
  frozen_host = jax.device_get(frozen)
  out: list[dict | None] = []
  eff0 = None
  for i, (c, w) in enumerate(zip(configs, workdirs)):
    if failed_at[i]:
      out.append(None)
      continue
    trainable = jax.tree.map(lambda x: x[i], runs.params)
    model_state = jax.tree.map(lambda x: x[i], runs.model_state)
    fz = frozen_host if shared else jax.tree.map(lambda x: x[i], frozen_host)
    variables = {"params": params_lib.merge_params(trainable, fz), **model_state}
    model, _ = methods.build_model(c)
    local = jax.device_put(variables, jax.local_devices()[0])
    # The efficiency numbers do not depend on the values packed runs differ in: measured once (GMACs,
    # throughput); a method whose compute depends on the input (a `gmacs` statistic) gets its own report from its
    # own statistics.
    if eff0 is None or "gmacs" in last_eval[i]["stats"]:
      eff = efficiency.report(c, model, local, example_input=task.example_input, trainable=trainable,
                              eval_stats=last_eval[i]["stats"], train_memory_bytes=memory,
                              measure_throughput=c.efficiency.enabled and eff0 is None, per_image=task.efficiency)
      eff = {**{key: v for key, v in (eff0 or {}).items() if key.startswith("throughput_")}, **eff,
             "peak_train_memory_source": memory_source}
    else:
      eff = dict(eff0)
    eff0 = eff0 or eff
    final_loss = last_train[i].get("train/loss")
    if final_loss is None and start_step == total_steps:
      final_loss = results_lib.read_field(w, "final_train_loss")
    wall_s = wall(i)
    workdir_lib.write_run_file(w, c, wall_s)
    r = results_lib.build(c, method, task, evaluation=last_eval[i], num_train=num_train, steps=total_steps,
                          final_train_loss=final_loss, efficiency=eff, num_devices=mesh.shape["data"],
                          wall_time_s=wall_s, run_fingerprint=workdir_lib.fingerprint(c),
                          pack={"dir": pack_dir, "runs": k, "index": i, "devices": int(mesh.devices.size),
                                "traced": list(values), "varying": list(traced),
                                "runs_one_after_another": exact, "shared_backbone": shared,
                                "wall_time_s": time.time() - start})
    methods.save_model_dir(os.path.join(w, "model"), c, variables, scope="trainable")
    reporting.write_json(results_lib.path(w), r)
    writers[i].write_scalars(total_steps, {f"final/{task.primary_metric}": r[task.primary_metric]})
    out.append(r)
  for wr in writers:
    wr.flush()
  ckpts.close()
  return out


def _report_failures(configs, workdirs, failed_at, reported: set) -> None:
  """Writes `error.json` for each run newly stopped non-finite (what a run of its own raises as an error)."""
  for i, s in enumerate(failed_at):
    if s and i not in reported:
      reported.add(i)
      message = (f"training diverged: the loss or the parameters are NaN/inf at step {int(s)} (the run stopped "
                 "there; the rest of its pack went on). Lower config.optim.lr, set config.optim.grad_clip (e.g. "
                 "1.0), or use config.model.dtype='float32'.")
      logging.error("run %s: %s", workdirs[i], message)
      print(f"error: {workdirs[i]}: {message}", flush=True)
      reporting.write_json(os.path.join(workdirs[i], ERROR_FILE), {"error": message, "step": int(s)})
