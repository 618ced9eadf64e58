"""Video recognition: clips (B, T, S, S, 3) and integer labels in training; at test every video is read as V
views (temporal x spatial, `config.video`), batches (B, V, T, S, S, 3), and the model averages its logits over
the views (`vit_adapt.models.video`); top-1 and top-5 are of those averaged predictions.

The efficiency report compiles one view (`example_input`: (n, T, S, S, 3)), so its GMACs are per view; the
results add `gmacs_per_view`, `views_per_video` and `gmacs_per_video` = views x per view (`efficiency_fields`), and
the throughput in clips (views) per second. An undecodable video skipped by `config.video.skip_corrupt` counts in
no metric; `data_fields` reports them per split: `skipped_videos` = {'train': {'split', 'count', 'first'},
'eval': {...}} (`first`: the first names, file and list line), `num_skipped_train_videos`, and the evaluation's
`num_skipped_videos`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from vit_adapt.data.video import pipeline, skips
from vit_adapt.tasks import base, classification


def model_input(batch):
  return batch["video"]


def example_input(config, n: int) -> jax.ShapeDtypeStruct:
  size = config.model.image_size
  return jax.ShapeDtypeStruct((n, int(config.video.num_frames), size, size, 3), jnp.float32)


def batch_spec(config, n: int) -> dict:
  return {"video": example_input(config, n), "label": jax.ShapeDtypeStruct((n,), jnp.int32)}


# A clip's label is an image's: the training loss, targets and metrics are classification's.
targets = classification.targets
loss = classification.loss
train_metrics = classification.train_metrics


def eval_sums(logits, batch) -> dict:
  mask = batch["mask"].astype(jnp.float32)
  label = batch["label"]
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, label)
  k = min(5, logits.shape[-1])
  top5 = jnp.any(jax.lax.top_k(logits, k)[1] == label[:, None], axis=-1)
  return {"correct": jnp.sum((jnp.argmax(logits, -1) == label) * mask), "correct5": jnp.sum(top5 * mask),
          "loss": jnp.sum(ce * mask), "count": jnp.sum(mask),
          "skipped": jnp.sum(batch["skipped"].astype(jnp.float32)) if "skipped" in batch else jnp.zeros(())}


def summarize(totals: dict) -> dict:
  count = float(totals.get("count", 0.0))
  skipped = int(totals.get("skipped", 0))
  if count == 0:
    return {"top1": math.nan, "top5": math.nan, "loss": math.nan, "num_examples": 0, "num_skipped_videos": skipped}
  return {"top1": float(totals["correct"]) / count, "top5": float(totals["correct5"]) / count,
          "loss": float(totals["loss"]) / count, "num_examples": int(count), "num_skipped_videos": skipped}


def efficiency_fields(config, efficiency: dict) -> dict:
  """Per-view GMACs (what the report compiled or averaged) and per video (x the test views)."""
  views = int(config.video.temporal_views) * int(config.video.spatial_views)
  per_view = efficiency.get("gmacs_per_image")
  out = {"views_per_video": views, "num_frames": int(config.video.num_frames)}
  if per_view is not None:
    out.update(gmacs_per_view=per_view, gmacs_per_video=views * per_view)
  if "throughput_images_per_s" in efficiency:
    out["throughput_clips_per_s"] = efficiency["throughput_images_per_s"]
  return out


def data_fields(config, train_iterator, evaluation: dict) -> dict:
  """The undecodable videos skipped per split (training: counted by the iterator over the whole run, resumes
  included, summed over hosts; names of the first from this host)."""
  train = train_iterator.summary() if isinstance(train_iterator, skips.SkipTally) else {"count": 0, "first": []}
  if jax.process_count() > 1:
    train["count"] = int(np.sum(multihost_utils.process_allgather(np.int64(train["count"]))))
  names = evaluation.get("notes", {}).get("skipped_where", [])
  count = int(evaluation.get("num_skipped_videos", len(names)))
  return {"num_skipped_train_videos": train["count"], "skipped_videos": {
      "train": {"split": config.dataset.split, **train},
      "eval": {"split": config.dataset.eval_split, "count": count, "first": names[:skips.KEEP_NAMES]}}}


VIDEO = base.register(base.Task(
    name="video", train_iterator=pipeline.train_iterator, eval_batches=pipeline.eval_batches,
    num_examples=pipeline.num_examples, model_input=model_input, example_input=example_input,
    batch_spec=batch_spec, targets=targets, loss=loss, train_metrics=train_metrics, eval_sums=eval_sums,
    summarize=summarize, primary_metric="top1", efficiency_fields=efficiency_fields, data_fields=data_fields,
    class_names=pipeline.class_names, doc=__doc__))
