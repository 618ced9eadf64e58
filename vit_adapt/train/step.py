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
  its terms to, and the training metrics.
  """
  task = task or tasks.for_config(config)
  num_classes = config.dataset.num_classes
  streams = ("dropout",) + tuple(method.rng_streams)

  def train_step(state: TrainState, frozen, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    inputs = task.model_input(batch)
    labels = task.targets(batch, num_classes)
    mutable = list(state.model_state)
    pass_counter = itertools.count()

    def loss_fn(trainable):
      params = params_lib.merge_params(trainable, frozen)

      def run(**kwargs):
        # Each pass (the main one, and any a method's loss re-runs) draws its own dropout/stream keys.
        pass_rng = jax.random.fold_in(step_rng, next(pass_counter))
        rngs = {name: jax.random.fold_in(pass_rng, i) for i, name in enumerate(streams)}
        variables = {"params": params, **state.model_state}
        if mutable:
          (logits, out), updates = model.apply(variables, inputs, train=True, rngs=rngs, mutable=mutable,
                                               **kwargs)
          return logits, out, updates
        logits, out = model.apply(variables, inputs, train=True, rngs=rngs, **kwargs)
        return logits, out, {}

      logits, out, updates = run()
      forward = lambda **kw: run(**kw)[:2]
      loss, aux = method.loss(methods_base.LossInputs(
          logits=logits, out=out, labels=labels, forward=forward, config=config.method, train=True,
          task_loss=lambda lg: task.loss(lg, labels)))
      return loss, (logits, aux, updates)

    (loss, (logits, aux, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    model_state = {**state.model_state, **updates}

    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
               **task.train_metrics(logits, batch)}
    # A method's loss terms and diagnostics (e.g. DyT's activation rate), logged as batch means.
    metrics.update({k: jnp.mean(jnp.asarray(v, jnp.float32)) for k, v in aux.items()})
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
    return new_state, metrics

  return train_step


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
