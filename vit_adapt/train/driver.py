"""The step loop the trainers share: `train/loop.py` (one run) and `train/packed.py` (K runs in one program).

One place decides the order of a step's side effects, which resumption and the metrics files depend on: run the
compiled step, then (every `train.log_every_steps`, before an evaluation and at a checkpoint) fetch the pending
metrics, evaluate every `train.eval_every_epochs`, checkpoint every `train.checkpoint_every_steps` and at the last
step; the final model is evaluated unless the last step already was. Metrics stay on the device between log
steps (no host sync).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from absl import logging

from vit_adapt.efficiency import measure


class CompiledStep:
  """A jitted step, compiled ahead of time once per argument shapes (a new batch shape compiles again).

  `peak_bytes`: XLA's memory analysis (per device) of the first program compiled, None until then. It costs
  nothing extra: the step is compiled anyway, and a persistent compilation cache hit reads it back too.
  """

  def __init__(self, jitted):
    self.jitted = jitted
    self.peak_bytes: int | None = None
    self._compiled: dict = {}

  def compiled(self, *args):
    key = tuple((x.shape, x.dtype) for x in jax.tree.leaves(args[1:]))  # args[0], the state, never changes shape
    if key not in self._compiled:
      self._compiled[key] = self.jitted.lower(*args).compile()
      if self.peak_bytes is None:
        self.peak_bytes = measure.memory_stats(self._compiled[key]).peak_bytes
    return self._compiled[key]

  def __call__(self, *args):
    return self.compiled(*args)(*args)


def restore(ckpts, state, data, total_steps: int, what: str = "run"):
  """-> (the latest checkpoint's state, else `state`; the step it ends). Restores `data`'s position too."""
  restored = ckpts.restore_latest(state, data)
  state = state if restored is None else restored
  start_step = int(jax.device_get(state.step))
  if start_step:
    logging.info("Resuming the %s at step %d of %d", what, start_step, total_steps)
  return state, start_step


def run_steps(state, *, start_step: int, total_steps: int, steps_per_epoch: int, train_config,
              step: Callable[[Any], tuple[Any, Any]], flush: Callable[[Any, int, list], None],
              evaluate: Callable[[Any, int], Any], ckpts, data, progress) -> tuple[Any, Any]:
  """Steps `start_step + 1 .. total_steps`; -> (final state, evaluation of the final model).

  `step(state) -> (state, metrics)` takes the next batch and runs one step; `flush(state, step, pending)` fetches
  and writes the metrics of the steps since the last flush (it may be called with none pending);
  `evaluate(state, step)` evaluates; `ckpts.save(state, data)` checkpoints the state with the data iterator.
  """
  log_every = max(train_config.log_every_steps, 1)
  ckpt_every = train_config.checkpoint_every_steps
  eval_every = int(round(train_config.eval_every_epochs * steps_per_epoch))
  pending: list = []  # per-step metrics (device arrays) not yet fetched
  last_eval, last_eval_step = None, -1
  for s in range(start_step + 1, total_steps + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=s):
      state, metrics = step(state)
    pending.append(metrics)
    progress(s)
    is_last = s == total_steps
    do_ckpt = is_last or (ckpt_every > 0 and s % ckpt_every == 0)
    do_eval = not is_last and eval_every > 0 and s % eval_every == 0
    if do_ckpt or do_eval or s % log_every == 0:
      flush(state, s, pending)
      pending = []
    if do_eval:
      last_eval, last_eval_step = evaluate(state, s), s
    if do_ckpt:
      ckpts.save(state, data)
  flush(state, total_steps, pending)
  ckpts.wait_until_finished()
  # The final model, never a test-selected epoch.
  if last_eval_step != total_steps:
    last_eval = evaluate(state, total_steps)
  return state, last_eval
