"""A run's numeric hyper-parameters enter its compiled programs as arguments, not as constants.

The fields a packed sweep may vary without changing any array shape or the program's structure (`optim.lr`,
`optim.min_lr`, `optim.wd` and a method's `traced_fields`: the adapter's scale, LoRA's alpha, DyT's rate target
and loss weights) are passed to the training and evaluation steps as float32 scalars (`values_of`), and the model,
optimizer and schedule are built from them inside the program (`train_step`, `eval_step`). A run alone (the
trainer, `train/loop.py`) and every run of a pack (`train/packed.py`) do this the same way, with the same fields:

  * so a packed run is the program of the run alone: bitwise equal on CPU, where the pack steps its runs one
    after another (`over_runs`). Folding a constant learning rate into the warmup-cosine schedule rounds 1 ulp
    differently from computing it from a traced one at ~5 % of the steps of the demo, and over its 440 steps
    that grew into a one-image top-1 difference between a packed run and the same run alone;
  * so runs of a sweep that differ only in these values (a learning-rate grid) compile to one program: the
    persistent compilation cache serves every value after the first.

A field is not passed when its zero changes the program (`optim.wd == 0` drops the decay term; packs agree on
it, `train/packed.py: pack_key`) or when its value is not a number. Programs that only read a trained model
(`predict`, `curve`, the efficiency report) build it with its values as constants: their evaluation equals the
trainer's up to float rounding (the DyT and MET digits demos: the same top-1 both ways).
"""

from __future__ import annotations

from typing import Callable

import flax
import jax
import ml_collections
import numpy as np

from vit_adapt import methods
from vit_adapt.models import params as params_lib
from vit_adapt.train import evaluate, optim
from vit_adapt.train import step as train_state

# Config fields passed as values, beyond the method's `traced_fields`.
OPTIM_FIELDS = ("optim.lr", "optim.min_lr", "optim.wd")
# Fields whose zero changes the program's structure: passed only when non-zero.
STRUCTURAL_ZERO = ("optim.wd",)


def flat(config) -> dict:
  """The config as {dotted field: value}."""
  return {".".join(k): v for k, v in flax.traverse_util.flatten_dict(config.to_dict()).items()}


def candidate_fields(config) -> tuple[str, ...]:
  """Every field that may be a value: what runs of one pack may differ in beyond what enters on the host."""
  return OPTIM_FIELDS + tuple(f"method.{f}" for f in methods.get(config.method.name).traced_fields)


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def value_fields(config) -> tuple[str, ...]:
  """The fields of this config passed as values (the same for every run of a pack: they agree on zeros)."""
  f = flat(config)
  return tuple(k for k in candidate_fields(config)
               if _is_number(f.get(k)) and not (k in STRUCTURAL_ZERO and f[k] == 0))


def values_of(config, fields=None) -> dict[str, np.ndarray]:
  """-> {field: float32 scalar} of `fields` (default: `value_fields(config)`)."""
  f = flat(config)
  return {k: np.float32(f[k]) for k in (value_fields(config) if fields is None else fields)}


def _weak(x):
  # A value must combine with arrays as the Python float it replaces does (weakly typed: `scale * bfloat16
  # activations` stays bfloat16); JAX has no public spelling of a weak-type cast.
  from jax._src.lax import lax as lax_internal  # pylint: disable=g-import-not-at-top
  return lax_internal._convert_element_type(x, weak_type=True)  # noqa: SLF001


def with_values(config, values: dict) -> ml_collections.ConfigDict:
  """`config` with dotted fields replaced by (traced) values: what the program sees."""
  out = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  for key, value in values.items():
    *path, leaf = key.split(".")
    block = out
    for p in path:
      block = block[p]
    block[leaf] = _weak(value)
  return out


def train_step(config, method, task, total_steps: int, warmup_steps: int) -> Callable:
  """-> step(state, frozen, batch, values) -> (state, metrics): the trainer's `make_train_step` with its model,
  optimizer and schedule built from `with_values(config, values)` inside the program (pure, to be jitted)."""

  def step(state, frozen, batch, values):
    c = with_values(config, values)
    model, _ = methods.build_model(c)
    tx, schedule = optim.make_optimizer(c.optim, state.params, total_steps, warmup_steps)
    return train_state.make_train_step(model, method, c, tx, schedule, task)(state, frozen, batch)

  return step


def eval_step(config, method, task) -> Callable:
  """-> step(trainable, frozen, model_state, values, batch) -> masked sums: the trainer's evaluation step with the
  model built from `with_values(config, values)` inside the program (pure, to be jitted)."""

  def step(trainable, frozen, model_state, values, batch):
    model, _ = methods.build_model(with_values(config, values))
    variables = {"params": params_lib.merge_params(trainable, frozen), **model_state}
    return evaluate.make_eval_step(model, method, task)(variables, batch)

  return step


def over_runs(fn: Callable, in_axes: tuple, *, exact: bool) -> Callable:
  """`fn` over a leading run axis of the arguments whose `in_axes` entry is 0 (None: shared by every run).

  `exact`: one run after another (`lax.map`): each run computes in the shapes of a run alone, so it rounds as
  the run alone does. Otherwise `jax.vmap`: the runs batched into each operation, which fills an accelerator but
  lets XLA order a reduction differently than for one run (on CPU even a vmapped pack of one run left the
  trainer's parameters after 2 steps of the demo).
  """
  if any(a not in (0, None) for a in in_axes):
    raise ValueError(f"in_axes entries are 0 or None, not {in_axes}")
  if not exact:
    return jax.vmap(fn, in_axes=in_axes)
  mapped = [i for i, a in enumerate(in_axes) if a == 0]

  def run_all(*args):
    def one(xs):
      full = list(args)
      for i, x in zip(mapped, xs):
        full[i] = x
      return fn(*full)
    return jax.lax.map(one, tuple(args[i] for i in mapped))

  return run_all
