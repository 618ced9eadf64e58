"""Evaluation over padded, masked batches: the task's metrics and the method's per-example statistics.

The pipeline pads the last batch to the static batch shape and marks real examples with `mask`; every sum here
is masked, so padding never counts. Sums are accumulated on the host in float64 and divided once at the end; a sum
may be an array (e.g. per-class counts, or a method statistic with K values per example such as MET's per-exit
correctness), accumulated elementwise, and scalar sums reach the task as Python floats. A batch's string fields
(host-only, e.g. video's `skipped_where`) never reach the device: their non-empty values are collected, in
order, under the result's 'notes'.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from vit_adapt.train import mesh as mesh_lib


def make_eval_step(model, method, task) -> Callable:
  """-> eval_step(variables, batch) -> dict of masked sums (pure, to be jitted by the caller)."""

  def eval_step(variables, batch):
    if task.eval_forward is not None:  # e.g. sliding windows over images larger than the model's input
      logits, out = task.eval_forward(model, variables, task.model_input(batch))
    else:
      logits, out = model.apply(variables, task.model_input(batch), train=False)
    sums = dict(task.eval_sums(logits, batch))
    stats = {}
    if method.eval_stats is not None:
      stats = method.eval_stats(logits, out, task.targets(batch, logits.shape[-1]))
    mask = batch["mask"].astype(jnp.float32)
    for name, value in stats.items():
      # (B,) -> a scalar sum; (B, K) -> K sums: the masked sum over the batch axis only.
      sums[f"stat/{name}"] = jnp.tensordot(mask, jnp.asarray(value, jnp.float32), axes=1)
    return sums

  return eval_step


def accumulate(totals: dict, sums: dict) -> dict:
  """totals += one batch's sums (host values), elementwise in float64; returns `totals`."""
  for k, v in sums.items():
    v = np.asarray(v, np.float64)
    totals[k] = totals[k] + v if k in totals else v
  return totals


def collect_notes(notes: dict, batch: dict) -> dict:
  """notes[key] += the non-empty strings of the batch's host-only string fields; returns `notes`."""
  for k, v in batch.items():
    if mesh_lib.is_host_field(v):
      notes.setdefault(k, []).extend(str(s) for s in np.asarray(v).ravel() if str(s))
  return notes


def summarize(task, totals: dict, notes: dict | None = None) -> dict:
  """Host totals -> the task's metrics + {'stats': the method's statistics averaged over the examples}
  (+ {'notes': the collected strings} when a batch had string fields)."""
  totals = {k: float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64) for k, v in totals.items()}
  count = totals.get("count", 0.0)
  stats = {k.split("/", 1)[1]: v / count for k, v in totals.items() if k.startswith("stat/")} if count else {}
  result = {**task.summarize({k: v for k, v in totals.items() if not k.startswith("stat/")}), "stats": stats}
  return {**result, "notes": notes} if notes else result


class Evaluator:
  """Compiles the eval step once for the mesh and runs it over an iterable of host-local batches.

  `step(inputs, batch) -> sums` (default: `make_eval_step(model, method, task)`, whose `inputs` are the model's
  variables) replaces the step; `inputs` (any tree, replicated) is what `__call__` is given first.
  """

  def __init__(self, model, method, task, mesh, *, step: Callable | None = None):
    self._task = task
    self._data = mesh_lib.batch_sharded(mesh)
    repl = mesh_lib.replicated(mesh)
    self._step = jax.jit(step or make_eval_step(model, method, task), in_shardings=(repl, self._data),
                         out_shardings=repl)

  def __call__(self, inputs, batches: Iterable[dict]) -> dict:
    totals: dict[str, np.ndarray] = {}
    notes: dict[str, list] = {}
    for batch in batches:
      collect_notes(notes, batch)
      sums = self._step(inputs, mesh_lib.global_batch(batch, self._data))
      accumulate(totals, jax.device_get(sums))
    return summarize(self._task, totals, notes)
