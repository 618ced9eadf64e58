"""The task interface: what a kind of learning problem decides, next to what a method decides.

A method (`vit_adapt.methods`) says how a ViT is adapted: its model, trainable parameters, extra loss terms,
statistics, budget knob. A task says what is learned and how it is measured, whatever the method:

  data        the grain pipelines of its datasets: `train_iterator`, `eval_batches`, `num_examples`
  inputs      `model_input(batch)` (what the model is applied to), `example_input(config, n)` (the input of n
              examples, which the efficiency report compiles) and `batch_spec(config, n)` (a training batch's
              arrays, for the compiled training step's memory)
  loss        `targets(batch, num_classes)` and `loss(logits, targets)`: the task loss that a method's loss adds
              its own terms to (it reaches methods as `LossInputs.task_loss`)
  metrics     `train_metrics(logits, batch)`, and for evaluation `eval_sums(logits, batch)` (masked sums of one
              padded batch, with 'count'; a sum may be an array, e.g. per-class counts, summed elementwise) and
              `summarize(totals)` -> {'loss', <primary metric>, ...}: scalars only (they go to the metric writers)
  optional    `efficiency_fields(config, efficiency)` (extra results fields derived from the efficiency report, e.g.
              video's GMACs per view and per video), `data_fields(config, train_iterator, evaluation)` (extra
              results fields about the data the run read, e.g. video's skipped undecodable videos per split)
              and `class_names(config, split)`;
              `extra_loss(out, targets, config)` -> (loss, metrics): a term on the model's named extras added to
              the method's loss in training (segmentation's auxiliary head); `eval_forward(model, variables,
              inputs)` -> (logits, out): the evaluation forward when it is not one `model.apply` (segmentation's
              sliding windows), `out` holding the per-example statistics a method's `eval_stats` reads;
              `efficiency(config, model, variables, report, eval_stats)` -> the efficiency report's fields per
              evaluated image when one image is not one `example_input` (segmentation: windows per image)

The trainer, the evaluator and the efficiency report read these fields; nothing else names a task. The task of
a run is its dataset's (`vit_adapt.data.datasets.Dataset.task`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections

from vit_adapt.registry import Registry

Config = ml_collections.ConfigDict
Batch = dict


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  train_iterator: Callable[..., Any]      # (config, *, seed) -> checkpointable iterator of host-local batches
  eval_batches: Callable[..., Any]        # (config, split=None, *, batch_size=None) -> padded, masked batches
  num_examples: Callable[..., int]        # (config, split=None) -> examples in the split over all hosts
  model_input: Callable[[Batch], Any]
  example_input: Callable[[Config, int], jax.ShapeDtypeStruct]
  batch_spec: Callable[[Config, int], dict[str, jax.ShapeDtypeStruct]]
  targets: Callable[[Batch, int], jax.Array]
  loss: Callable[[jax.Array, jax.Array], jax.Array]
  train_metrics: Callable[[jax.Array, Batch], dict[str, jax.Array]]
  eval_sums: Callable[[jax.Array, Batch], dict[str, jax.Array]]
  summarize: Callable[[dict[str, float]], dict[str, Any]]
  primary_metric: str = "top1"
  # Optional: (config, the efficiency report's fields) -> extra results fields (video: GMACs per view and video).
  efficiency_fields: Callable[[Config, dict], dict] | None = None
  # Optional: (config, the training iterator the run consumed, the final evaluation's result) -> extra results
  # fields about the data read (video: undecodable videos skipped in training and evaluation).
  data_fields: Callable[[Config, Any, dict], dict] | None = None
  # Optional: (config, split=None) -> the dataset's class names (for `predict`'s top-5), () when it has none.
  class_names: Callable[..., tuple] | None = None
  # Optional: (out, targets, config) -> (loss, metrics) added to the method's loss (segmentation's aux head).
  extra_loss: Callable[..., tuple[jax.Array, dict]] | None = None
  # Optional: (model, variables, inputs) -> (logits, out) when evaluation is not one model.apply.
  eval_forward: Callable[..., tuple[jax.Array, dict]] | None = None
  # Optional: (config, model, variables, report, eval_stats) -> the report per evaluated image (applied before
  # `efficiency_fields`, which reads its result).
  efficiency: Callable[..., dict] | None = None
  doc: str = ""


_TASKS: Registry[Task] = Registry(
    "task", lambda name, known: f"{name!r} is not a learning task vit_adapt has. Known tasks: {', '.join(known)}.")
register = _TASKS.register
lookup = _TASKS.get
registered = _TASKS.names
