"""Image classification: images (B, S, S, 3) and integer labels; soft-target cross-entropy; top-1.

Targets are the pipeline's `soft_label` (mixup, cutmix, label smoothing) when it has one, else one-hot labels.
Evaluation sums over padded batches are masked by `mask`, so padding never counts; the summary divides once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
  return {"correct": jnp.sum((jnp.argmax(logits, -1) == label) * mask), "loss": jnp.sum(ce * mask),
          "count": jnp.sum(mask)}


def summarize(totals: dict) -> dict:
  count = totals.get("count", 0.0)
  if count == 0:
    return {"top1": float("nan"), "loss": float("nan"), "num_examples": 0}
  return {"top1": totals["correct"] / count, "loss": totals["loss"] / count, "num_examples": int(count)}


CLASSIFICATION = base.register(base.Task(
    name="classification", train_iterator=pipeline.train_iterator, eval_batches=pipeline.eval_batches,
    num_examples=pipeline.num_examples, model_input=model_input, example_input=example_input,
    batch_spec=batch_spec, targets=targets, loss=loss, train_metrics=train_metrics, eval_sums=eval_sums,
    summarize=summarize, primary_metric="top1", doc=__doc__))
