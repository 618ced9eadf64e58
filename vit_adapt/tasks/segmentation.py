"""Semantic segmentation: images (B, S, S, 3) and label maps (B, S, S) of class ids, 255 = ignored.

The model is a method's ViT with a dense head (`config.model.head='upernet'`, vit_adapt/models/dense.py): logits
(B, S, S, C) at the input resolution and, in training, `out['aux_logits']` of the auxiliary FCN head.
Loss: pixel cross-entropy ignoring label 255, averaged over all pixels as mmseg 0.11 does (ignored pixels count
as 0), plus `segmentation.aux_weight` (0.4) times the same loss of the auxiliary logits (`extra_loss`).
Evaluation runs sliding windows of the model's input size over each (padded) evaluation canvas
(`eval_forward`, `dense.slide_logits`: stride `model.slide_stride`, `model.window_batch` windows per compiled
forward, overlaps averaged) and accumulates one confusion matrix (C x C, rows = truth, columns = prediction)
over the whole split on device, padding and ignored pixels masked.
Efficiency (`efficiency`): the report's program is one window; per image = windows per evaluation canvas x (the
backbone's GMACs of a window, DyT's average over the evaluated windows where the method measures one, + the
head's, the window program's minus its backbone's), split `gmacs_backbone_per_image` / `gmacs_head_per_image`,
counted on one window's program (never on the sliding-window one); throughput in windows/s and images/s. Metrics (mmseg's): `mIoU` (primary) and
`mAcc`, the means over classes with IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN), classes absent from
both truth and prediction (0 / 0) left out of the mean; `aAcc` the pixel accuracy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_adapt.data import segmentation as data
from vit_adapt.efficiency import measure
from vit_adapt.models import dense
from vit_adapt.tasks import base

IGNORE = data.IGNORE


def model_input(batch):
  return batch["image"]


def example_input(config, n: int) -> jax.ShapeDtypeStruct:
  size = config.model.image_size
  return jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32)


def batch_spec(config, n: int) -> dict:
  size = config.model.image_size
  return {"image": example_input(config, n), "label": jax.ShapeDtypeStruct((n, size, size), jnp.int32)}


def targets(batch, num_classes: int):
  del num_classes
  return batch["label"]


def loss(logits, labels):
  """Mean over all pixels of the cross-entropy, 0 at ignored pixels (mmseg 0.11's reduction)."""
  valid = labels != IGNORE
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  return jnp.mean(jnp.where(valid, ce, 0.0))


def extra_loss(out, labels, config):
  aux = loss(out["aux_logits"], labels)
  return config.segmentation.aux_weight * aux, {"aux_ce": aux}


def train_metrics(logits, batch) -> dict:
  valid = batch["label"] != IGNORE
  correct = (jnp.argmax(logits, -1) == batch["label"]) & valid
  return {"pixel_accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1)}


def confusion_matrix(pred, label, valid, num_classes: int):
  """(C, C) counts of (truth, prediction) over the `valid` pixels, on device (one bincount)."""
  index = jnp.where(valid, label * num_classes + pred, 0).reshape(-1)
  return jnp.bincount(index, weights=valid.reshape(-1).astype(jnp.float32),
                      length=num_classes * num_classes).reshape(num_classes, num_classes)


def eval_sums(logits, batch) -> dict:
  c = logits.shape[-1]
  mask = batch["mask"].astype(bool)
  label = batch["label"]
  valid = (label != IGNORE) & mask[:, None, None]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, label, 0))
  pixels = jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1)
  per_image = jnp.sum(jnp.where(valid, ce, 0.0), axis=(1, 2)) / pixels
  return {"confusion": confusion_matrix(jnp.argmax(logits, -1), label, valid, c),
          "loss": jnp.sum(per_image * mask), "count": jnp.sum(mask.astype(jnp.float32))}


def metrics_of_confusion(confusion) -> dict:
  """mIoU, mAcc, aAcc of a (truth, prediction) confusion matrix; NaN where undefined."""
  cm = np.asarray(confusion, np.float64)
  tp = np.diag(cm)
  truth, predicted = cm.sum(axis=1), cm.sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = tp / (truth + predicted - tp)
    acc = tp / truth
  mean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
  total = cm.sum()
  return {"mIoU": mean(iou), "mAcc": mean(acc), "aAcc": float(tp.sum() / total) if total else math.nan}


def summarize(totals: dict) -> dict:
  count = float(totals.get("count", 0.0))
  if count == 0:
    return {"mIoU": math.nan, "mAcc": math.nan, "aAcc": math.nan, "loss": math.nan, "num_examples": 0}
  return {**metrics_of_confusion(totals["confusion"]), "loss": float(totals["loss"]) / count,
          "num_examples": int(count)}


def eval_forward(model, variables, images):
  apply = lambda x: model.apply(variables, x, train=False)
  return dense.slide_logits(apply, images, window=model.image_size, stride=model.dense.stride,
                            window_batch=model.dense.window_batch)


def _backbone(module, images):
  return module.encode(module.embed(images), False)[0]


def windows_per_image(config, model) -> int:
  """Sliding windows over one evaluation canvas (`segmentation.eval_size`)."""
  window, stride = model.image_size, model.dense.stride
  h, w = data.scales(config)[1]
  return len(dense.window_starts(max(h, window), window, stride)) * len(dense.window_starts(max(w, window), window,
                                                                                            stride))


def efficiency(config, model, variables, report: dict, eval_stats: dict | None) -> dict:
  """The report of one window -> per evaluated image (see the module doc)."""
  n = windows_per_image(config, model)
  window_program = report.get("gmacs_program", report["gmacs_per_image"])
  backbone_program = measure.lowered_gmacs(lambda v, x: model.apply(v, x, method=_backbone), variables,
                                           example_input(config, 1))
  head = window_program - backbone_program
  backbone = float(eval_stats["gmacs"]) if eval_stats and "gmacs" in eval_stats else backbone_program
  out = {**report, "windows_per_image": n, "gmacs_per_window": backbone + head,
         "gmacs_per_image": n * (backbone + head), "gmacs_backbone_per_image": n * backbone,
         "gmacs_head_per_image": n * head}
  if "gmacs_program" in report:
    out["gmacs_program"] = n * window_program
  if "throughput_images_per_s" in report:
    out.update(throughput_windows_per_s=report["throughput_images_per_s"],
               throughput_images_per_s=report["throughput_images_per_s"] / n)
  return out


SEGMENTATION = base.register(base.Task(
    name="segmentation", train_iterator=data.train_iterator, eval_batches=data.eval_batches,
    num_examples=data.num_examples, model_input=model_input, example_input=example_input, batch_spec=batch_spec,
    targets=targets, loss=loss, train_metrics=train_metrics, eval_sums=eval_sums, summarize=summarize,
    primary_metric="mIoU", extra_loss=extra_loss, eval_forward=eval_forward, efficiency=efficiency, doc=__doc__))
