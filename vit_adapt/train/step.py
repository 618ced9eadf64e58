"""The training state and the training step.

`TrainState` holds only what trains and what must survive a restart: the trainable parameters, their optimizer
state, non-parameter collections (e.g. Sparse-Tuning's BatchNorm `batch_stats`), the step and the RNG key. The
frozen parameters are a separate argument of the step: they are closed over by the loss, never differentiated,
and never written to a checkpoint (they are rebuilt from `config.model.init` / the seed).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_adapt import tasks
from vit_adapt.efficiency import measure
from vit_adapt.train import optim
from vit_adapt.methods import base as methods_base

from vit_adapt.models import params as params_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: number of optimizer steps taken
  params: Any            # trainable parameters only
  opt_state: Any         # optimizer state of the trainable parameters
  model_state: Any       # non-parameter collections, e.g. {'batch_stats': ...}; {} for most methods
  rng: jax.Array         # uint32 (2,) raw key; per-step keys are fold_in(rng, step)

  def to_dict(self) -> dict:
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
            "model_state": self.model_state, "rng": self.rng}

  @classmethod
  def from_dict(cls, d: dict) -> "TrainState":
    return cls(step=d["step"], params=d["params"], opt_state=d["opt_state"], model_state=d["model_state"],
               rng=d["rng"])


def create(trainable, model_state, tx: optax.GradientTransformation, seed: int) -> TrainState:
  # The training key is a fold of the seed distinct from the one `init_variables` used for the parameters.
  def build(trainable, model_state):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=tx.init(trainable),
                      model_state=model_state, rng=rng)
  return jax.jit(build)(trainable, model_state)  # one compiled program instead of one per optimizer leaf


def make_train_step(model, method, config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, task=None) -> Callable:
  """-> train_step(state, frozen, batch) -> (new_state, metrics); pure, to be jitted by the caller.

  `task` (default: the config's, `tasks.for_config`) gives the model input, the targets, the loss a method adds
  its terms to, and the training metrics. With `config.train.accum_steps` = n > 1 the batch is split into n
  micro-batches run in turn (`accumulate`): one optimizer update of the averaged gradients.
  """
  task = task or tasks.for_config(config)
  num_classes = config.dataset.num_classes
  streams = ("dropout",) + tuple(method.rng_streams)
  accum_steps = int(config.train.get("accum_steps", 1))

  def batch_loss(trainable, state: TrainState, frozen, batch, rng, batch_mean):
    """-> (loss, (metrics, model_state updates)) of one (micro-)batch."""
    inputs = task.model_input(batch)
    labels = task.targets(batch, num_classes)
    mutable = list(state.model_state)
    params = params_lib.merge_params(trainable, frozen)
    pass_counter = itertools.count()

    def run(**kwargs):
      # Each pass (the main one, and any a method's loss re-runs) draws its own dropout/stream keys.
      pass_rng = jax.random.fold_in(rng, next(pass_counter))
      rngs = {name: jax.random.fold_in(pass_rng, i) for i, name in enumerate(streams)}
      variables = {"params": params, **state.model_state}
      if mutable:
        (logits, out), updates = model.apply(variables, inputs, train=True, rngs=rngs, mutable=mutable, **kwargs)
        return logits, out, updates
      logits, out = model.apply(variables, inputs, train=True, rngs=rngs, **kwargs)
      return logits, out, {}

    logits, out, updates = run()
    forward = lambda **kw: run(**kw)[:2]
    loss, aux = method.loss(methods_base.LossInputs(
        logits=logits, out=out, labels=labels, forward=forward, config=config.method, train=True,
        task_loss=lambda lg: task.loss(lg, labels), batch_mean=batch_mean))
    if task.extra_loss is not None:  # the task's own term on the model's extras (an auxiliary head)
      extra, extra_metrics = task.extra_loss(out, labels, config)
      loss = loss + extra
      aux = {**aux, **extra_metrics, **({"loss": loss} if "loss" in aux else {})}
    metrics = dict(task.train_metrics(logits, batch))
    # A method's loss terms and diagnostics (e.g. DyT's activation rate), logged as batch means.
    metrics.update({k: jnp.mean(jnp.asarray(v, jnp.float32)) for k, v in aux.items()})
    return loss, (metrics, updates)

  grad_fn = jax.value_and_grad(batch_loss, has_aux=True)

  def train_step(state: TrainState, frozen, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    if accum_steps == 1:
      (loss, (metrics, updates)), grads = grad_fn(state.params, state, frozen, batch, step_rng, _local)
    else:
      loss, metrics, updates, grads = accumulate(batch_loss, grad_fn, state, frozen, batch, step_rng, accum_steps)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    model_state = {**state.model_state, **updates}
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step), **metrics}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
    return new_state, metrics

  return train_step


def _local(name, value):
  del name
  return value


def split_micro_batches(batch, n: int):
  """(B, ...) leaves -> (n, B / n, ...): micro-batch i holds examples i, i + n, i + 2n, ... A data-parallel batch
  is split in contiguous rows over devices, so strided micro-batches take B / n / devices rows from every device
  (no data moves between devices)."""
  return jax.tree.map(lambda x: x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1), batch)


def accumulate(batch_loss, grad_fn, state: TrainState, frozen, batch, step_rng, n: int):
  """Gradient accumulation over n micro-batches in one program (`lax.scan`: one micro-batch's activations live
  at a time) -> (loss, metrics, model_state updates, gradients), each the mean over the micro-batches.

  Equal to the large batch's update when the loss is a mean of per-example terms, and for terms of whole-batch
  means a method passes through `LossInputs.batch_mean`: a forward-only first scan computes those means over
  all micro-batches (it is dropped from the program when the method has none), the second gives each micro-batch
  the global value with its own gradient. What cannot be equal: batch statistics inside the model (Sparse-Tuning's
  BatchNorm head normalises each micro-batch by its own statistics; the running statistics get the mean of the
  micro-batches' updates, one update per step as in the large batch), losses over pairs of examples (MET's graph
  term sees pairs within a micro-batch), and random draws (micro-batch i draws from fold_in(step key, i)).
  """
  micro = (split_micro_batches(batch, n), jnp.arange(n))

  def record_means(_, xs):
    mb, i = xs
    recorded = {}

    def record(name, value):
      recorded[name] = value
      return value

    batch_loss(state.params, state, frozen, mb, jax.random.fold_in(step_rng, i), record)
    return None, recorded

  _, recorded = jax.lax.scan(record_means, None, micro)
  global_means = {name: jnp.mean(v, axis=0) for name, v in recorded.items()}

  def global_mean(name, value):
    # Forward: the whole batch's mean; backward: this micro-batch's (the mean of those is the batch's gradient).
    return value + jax.lax.stop_gradient(global_means[name] - value)

  def micro_step(grad_sum, xs):
    mb, i = xs
    (loss, (metrics, updates)), grads = grad_fn(state.params, state, frozen, mb, jax.random.fold_in(step_rng, i),
                                                global_mean)
    return jax.tree.map(jnp.add, grad_sum, grads), (loss, metrics, updates)

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  grad_sum, (losses, metrics, updates) = jax.lax.scan(micro_step, zeros, micro)
  grads = jax.tree.map(lambda g: g / n, grad_sum)
  mean = lambda x: jnp.mean(x, axis=0) if jnp.issubdtype(x.dtype, jnp.inexact) else x[-1]
  return jnp.mean(losses), jax.tree.map(mean, metrics), jax.tree.map(mean, updates), grads


def train_step_memory(config, model, method, variables, task=None) -> int:
  """Peak bytes of the training step at `config.train.batch_size` on one device (compiled, never run)."""
  task = task or tasks.for_config(config)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  trainable, frozen = optim.split_trainable(params, method, config.optim)
  tx, sched = optim.make_optimizer(config.optim, trainable, total_steps=100, warmup_steps=10)
  state = jax.eval_shape(lambda t, m: create(t, m, tx, config.seed), trainable, model_state)
  step = make_train_step(model, method, config, tx, sched, task)
  batch = task.batch_spec(config, config.train.batch_size)
  frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), frozen)
  compiled = jax.jit(step, donate_argnums=0).lower(state, frozen, batch).compile()
  return measure.memory_stats(compiled).peak_bytes


@jax.jit
def all_finite(tree) -> jax.Array:
  """True iff no floating-point leaf holds a NaN or inf (one compiled reduction over the whole tree)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
