"""Image classification: images (B, S, S, 3) and integer labels; soft-target cross-entropy; top-1 and mean
per-class accuracy.

Targets are the pipeline's `soft_label` (mixup, cutmix, label smoothing) when it has one, else one-hot labels.
Evaluation sums over padded batches are masked by `mask`, so padding never counts; the summary divides once.
Every run reports `top1` (the primary metric) and `mean_per_class_accuracy`: the accuracy of each class that
occurs in the evaluated split, averaged over those classes — the number Oxford Flowers 102 and FGVC-Aircraft are
conventionally reported with. Its sums are per-class vectors (`class_correct`, `class_count`, length
num_classes); the summary is scalars only, so every metric can go to the metric writers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_adapt.data import pipeline
from vit_adapt.tasks import base


def model_input(batch):
  # Precomputed frozen features (a method's feature cache) replace the images when a batch carries them.
  return batch["features"] if "features" in batch else batch["image"]


def example_input(config, n: int) -> jax.ShapeDtypeStruct:
  size = config.model.image_size
  return jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32)


def batch_spec(config, n: int) -> dict:
  return {"image": example_input(config, n), "label": jax.ShapeDtypeStruct((n,), jnp.int32)}


def targets(batch, num_classes: int):
  if "soft_label" in batch:
    return batch["soft_label"].astype(jnp.float32)
  return jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)


def loss(logits, soft_targets):
  """Mean softmax cross-entropy with soft targets."""
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), soft_targets))


def train_metrics(logits, batch) -> dict:
  return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def eval_sums(logits, batch) -> dict:
  mask = batch["mask"].astype(jnp.float32)
  label = batch["label"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), label)
  correct = (jnp.argmax(logits, -1) == label) * mask
  per_class = jax.nn.one_hot(label, logits.shape[-1], dtype=jnp.float32)  # (B, C); labels are < C
  return {"correct": jnp.sum(correct), "loss": jnp.sum(ce * mask), "count": jnp.sum(mask),
          "class_correct": correct @ per_class, "class_count": mask @ per_class}


def mean_per_class_accuracy(class_correct, class_count) -> float:
  """Mean over the classes that occur (count > 0) of correct / count; NaN when none occurs."""
  class_correct, class_count = np.asarray(class_correct, np.float64), np.asarray(class_count, np.float64)
  present = class_count > 0
  if not present.any():
    return math.nan
  return float(np.mean(class_correct[present] / class_count[present]))


def summarize(totals: dict) -> dict:
  count = float(totals.get("count", 0.0))
  if count == 0:
    return {"top1": math.nan, "mean_per_class_accuracy": math.nan, "loss": math.nan, "num_examples": 0}
  mpca = (mean_per_class_accuracy(totals["class_correct"], totals["class_count"])
          if "class_count" in totals else math.nan)
  return {"top1": float(totals["correct"]) / count, "mean_per_class_accuracy": mpca,
          "loss": float(totals["loss"]) / count, "num_examples": int(count)}


CLASSIFICATION = base.register(base.Task(
    name="classification", train_iterator=pipeline.train_iterator, eval_batches=pipeline.eval_batches,
    num_examples=pipeline.num_examples, model_input=model_input, example_input=example_input,
    batch_spec=batch_spec, targets=targets, loss=loss, train_metrics=train_metrics, eval_sums=eval_sums,
    summarize=summarize, primary_metric="top1", doc=__doc__))
