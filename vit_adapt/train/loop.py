"""The training loop: `train_and_evaluate(config, workdir)` trains one method on one task, evaluates the final
model and writes `workdir/results.json` (accuracy + efficiency). The same loop serves every method; methods plug
in through `vit_adapt.methods.base.Method` (model class, trainable regexes, loss, RNG streams, eval stats), tasks
through `vit_adapt.tasks.base.Task` (data, model input, targets and loss, metrics).

Sections: mesh, data, model, optimizer, restore, step, eval, checkpoint, report. Re-running the same command on
the same workdir resumes from the latest checkpoint and ends with bitwise the same result (on CPU).
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging
from clu import parameter_overview, periodic_actions

from vit_adapt import config_lib, methods, tasks
from vit_adapt.checkpoints import weights
from vit_adapt.efficiency import report as efficiency
from vit_adapt.errors import UserError
from vit_adapt.models import params as params_lib
from vit_adapt.train import checkpoints as train_checkpoints
from vit_adapt.train import driver, evaluate, hparams, optim
from vit_adapt.train import mesh as mesh_lib
from vit_adapt.train import results as results_lib
from vit_adapt.train import step as train_state
from vit_adapt.train import workdir as workdir_lib
from vit_adapt.train import writers as reporting


def preflight(config, task) -> int:
  """Checks the inputs a run needs before any compute; -> the number of training examples.

  Missing backbone weights and an unprepared dataset are reported together, in one message that says what is
  missing, where to get it and which flag to set.
  """
  problems = []
  init = config.model.init
  if init and not os.path.exists(init) and not weights.is_name(init):  # a name is downloaded when loaded
    problems.append(
        f"the backbone checkpoint config.model.init={init!r} does not exist. Download the ViT weights (e.g. "
        "ViT-B/16 ImageNet-21k: gs://vit_models/imagenet21k/ViT-B_16.npz, see docs/checkpoints.md) and pass "
        "--config.model.init=/path/to/ViT-B_16.npz, or a name such as --config.model.init=vit-b16-in21k.")
  num_train = None
  try:
    num_train = task.num_examples(config, config.dataset.split)
    task.num_examples(config, config.dataset.eval_split)
  except UserError as e:
    hint = {"tfds": "Then point the run at it with --config.dataset.data_dir=<data_dir>, or use the image-folder "
                    "release with --config.dataset.source=folder --config.dataset.root=<root>",
            "folder": "Point the run at the folder release with --config.dataset.root=<root>, or use tfds with "
                      "--config.dataset.source=tfds --config.dataset.data_dir=<data_dir>"}.get(config.dataset.source)
    problems.append(f"the dataset is not available: {e}." + (f" {hint} (see docs/data.md)." if hint else ""))
  if problems:
    raise UserError("cannot start training:\n  - " + "\n  - ".join(problems))
  if not init:
    logging.warning("config.model.init is empty: the backbone is randomly initialised from config.seed "
                    "(intended for the demo and tests; real runs adapt a pre-trained checkpoint).")
  return num_train


def train_and_evaluate(config, workdir: str, *, restart: bool = False) -> dict:
  """Trains, evaluates the final model on `config.dataset.eval_split`, writes and returns results.json.

  Re-running on the same workdir resumes it; a workdir holding another run (a different config) is refused
  unless `restart`, which moves that run aside (train/workdir.py). Nothing is written before the config, the
  data and the weights are checked.
  """
  start = time.time()
  config_lib.validate(config)
  mesh_lib.maybe_initialize_distributed()
  workdir = os.path.abspath(workdir)
  # One 'data' axis over every device of every host: parameters replicated, batches split.
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(config.train.batch_size, "config.train.batch_size", mesh)
  mesh_lib.check_batch_size(config.eval.batch_size, "config.eval.batch_size", mesh)
  if config.train.accum_steps > 1:  # every device feeds every micro-batch (train/step.py: split_micro_batches)
    mesh_lib.check_batch_size(config.train.batch_size // config.train.accum_steps,
                              "config.train.batch_size / config.train.accum_steps", mesh)
  task = tasks.for_config(config)
  num_train = preflight(config, task)
  lengths = optim.schedule_lengths(config, num_train)
  workdir_lib.check_writable(workdir)
  lock = workdir_lib.Lock(workdir)
  try:
    clock = workdir_lib.Clock(workdir_lib.claim(workdir, config, restart=restart), start=start)
    return _train_and_evaluate(config, workdir, mesh, task, num_train, lengths, clock)
  finally:
    lock.release()


def _train_and_evaluate(config, workdir: str, mesh, task, num_train: int, lengths, clock) -> dict:
  reporting.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  writer = reporting.create_writer(workdir)
  writer.write_hparams(reporting.hparams(config))  # TensorBoard's HParams view compares a sweep's runs

  # ---------------------------------------------------------------------------------------------- mesh
  repl, data_sharding = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  logging.info("Mesh: %d devices (%s), %d processes", mesh.devices.size, jax.devices()[0].platform,
               jax.process_count())

  # ---------------------------------------------------------------------------------------------- data
  steps_per_epoch, total_steps, warmup_steps = lengths
  train_iter = task.train_iterator(config, seed=config.seed)
  logging.info("Data: %s split %r, %d examples, %d steps/epoch, %d steps (%d warmup)", config.dataset.name,
               config.dataset.split, num_train, steps_per_epoch, total_steps, warmup_steps)

  # ---------------------------------------------------------------------------------------------- model
  model, method = methods.build_model(config)
  variables = dict(methods.init_variables(model, method, config))
  params = variables.pop("params")
  model_state = variables  # non-parameter collections, e.g. {'batch_stats': ...}
  if method.feature_cache is not None:  # precomputed model inputs (SynQT's frozen features) replace the images
    cached_iter = method.feature_cache.iterator(config, workdir, model, {"params": params, **model_state})
    train_iter = cached_iter if cached_iter is not None else train_iter
  trainable, frozen = optim.split_trainable(params, method, config.optim)
  parameter_overview.log_parameter_overview(trainable, msg=f"Trainable parameters of {method.name!r}")

  # ---------------------------------------------------------------------------------------------- optimizer
  tx, _ = optim.make_optimizer(config.optim, trainable, total_steps, warmup_steps)  # the state's structure
  state = mesh_lib.replicate(train_state.create(trainable, model_state, tx, config.seed), repl)
  frozen = mesh_lib.replicate(frozen, repl)
  del params, trainable, model_state, variables

  # ---------------------------------------------------------------------------------------------- restore
  ckpts = train_checkpoints.TrainCheckpoints(os.path.join(workdir, "checkpoints"),
                                             keep=config.train.keep_checkpoints)
  state, start_step = driver.restore(ckpts, state, train_iter, total_steps)

  # ---------------------------------------------------------------------------------------------- step
  # Gradients of the trainable tree only; the frozen tree is an ordinary (non-donated) argument. The state is
  # donated: XLA updates parameters and optimizer moments in place. Compiled ahead of time per batch shapes,
  # which gives the step's memory analysis. The learning rate and the other fields a sweep varies enter as
  # values (train/hparams.py: what a packed run computes, bitwise; one program for a learning-rate grid).
  values = mesh_lib.replicate(hparams.values_of(config), repl)
  logging.info("Hyper-parameters passed to the programs as values: %s", list(values))
  step_fn = driver.CompiledStep(jax.jit(
      hparams.train_step(config, method, task, total_steps, warmup_steps),
      in_shardings=(repl, repl, data_sharding, repl), out_shardings=(repl, repl), donate_argnums=0))

  # ---------------------------------------------------------------------------------------------- eval
  run_eval_step = hparams.eval_step(config, method, task)
  evaluator = evaluate.Evaluator(model, method, task, mesh, step=lambda inputs, batch: run_eval_step(*inputs, batch))

  def run_eval(state, step: int) -> dict:
    inputs = (state.params, frozen, state.model_state, values)
    result = evaluator(inputs, task.eval_batches(config, config.dataset.eval_split))
    scalars = {k: v for k, v in result.items() if k not in ("stats", "notes", "num_examples")}
    scalars.update({f"stats/{k}": v for k, v in result["stats"].items()})
    writer.write_scalars(step, {f"eval/{k}": v for k, v in scalars.items()})
    logging.info("Eval at step %d on %r: %s %.4f over %d examples", step, config.dataset.eval_split,
                 task.primary_metric, result[task.primary_metric], result["num_examples"])
    return result

  # ---------------------------------------------------------------------------------------------- loop
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  last_train: dict = {}

  def flush(state, step: int, pending: list) -> None:
    """Fetches the pending metrics, stops on a non-finite loss (naming its step), logs their means."""
    nonlocal last_train
    if not pending:
      return
    fetched = jax.device_get(pending)
    first = step - len(fetched) + 1
    for i, m in enumerate(fetched):
      if not np.isfinite(m["loss"]):
        raise UserError(f"training diverged: the loss is {float(m['loss'])} at step {first + i} (no checkpoint "
                        "was written after it). Lower config.optim.lr, set config.optim.grad_clip (e.g. 1.0), or "
                        "use config.model.dtype='float32'.")
    last_train = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    writer.write_scalars(step, last_train)
    workdir_lib.write_run_file(workdir, config, clock.total())

  def one_step(state):
    return step_fn(state, frozen, mesh_lib.global_batch(next(train_iter), data_sharding), values)

  state, last_eval = driver.run_steps(
      state, start_step=start_step, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      train_config=config.train, step=one_step, flush=flush, evaluate=run_eval, ckpts=ckpts, data=train_iter,
      progress=progress)

  # ---------------------------------------------------------------------------------------------- report
  train_memory_bytes = step_fn.peak_bytes
  variables = {"params": params_lib.merge_params(state.params, frozen), **state.model_state}
  # Measured on one device: what one accelerator does at the stated batch size.
  local = jax.device_put(jax.device_get(variables), jax.local_devices()[0])
  if train_memory_bytes is None:  # resumed after the last step: no step was compiled in this process
    train_memory_bytes = train_state.train_step_memory(config, model, method, local, task)
  eff = efficiency.report(config, model, local, example_input=task.example_input, trainable=state.params, eval_stats=last_eval["stats"],
                          train_memory_bytes=train_memory_bytes, measure_throughput=config.efficiency.enabled,
                          per_image=task.efficiency)
  data_fields = task.data_fields(config, train_iter, last_eval) if task.data_fields is not None else {}
  if data_fields:
    logging.info("Data read by the run: %s", data_fields)
  final_train_loss = last_train.get("train/loss")
  if final_train_loss is None and start_step == total_steps:  # re-evaluating a finished run: keep its loss
    final_train_loss = results_lib.read_field(workdir, "final_train_loss")
  wall_time_s = clock.total()
  workdir_lib.write_run_file(workdir, config, wall_time_s)
  results = results_lib.build(config, method, task, evaluation=last_eval, num_train=num_train, steps=total_steps,
                              final_train_loss=final_train_loss, efficiency=eff, num_devices=mesh.devices.size,
                              wall_time_s=wall_time_s, run_fingerprint=workdir_lib.fingerprint(config), **data_fields)
  # The final model, adapter-only like the checkpoints: `predict --checkpoint=WORKDIR` rebuilds the frozen rest.
  methods.save_model_dir(os.path.join(workdir, "model"), config, jax.device_get(variables), scope="trainable")
  reporting.write_json(results_lib.path(workdir), results)
  writer.write_scalars(total_steps, {f"final/{task.primary_metric}": results[task.primary_metric]})
  writer.flush()
  ckpts.close()
  logging.info("Results: %s", results)
  return results
