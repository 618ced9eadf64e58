"""Mean per-class accuracy: the classification task's per-class sums on a known confusion matrix, their float64
accumulation in the evaluator and in the sweep's vmapped shared-feature evaluation, and a tiny end-to-end FGVC
run (generated VPT-layout folder) whose results.json has both `top1` and `mean_per_class_accuracy`."""

import json
import os
import types

import jax.numpy as jnp
import numpy as np
import pytest
from test_data_fgvc import vpt_folder

from vit_adapt import tasks, train
from vit_adapt.sweep import shared_features
from vit_adapt.train import evaluate
from vit_adapt.train import mesh as mesh_lib

C = 4
# A known confusion matrix (rows: true class, columns: predicted); class 3 never occurs in the split.
CONFUSION = np.array([[3, 1, 0, 0],    # class 0: 3/4
                      [1, 1, 0, 0],    # class 1: 1/2
                      [0, 1, 2, 0],    # class 2: 2/3
                      [0, 0, 0, 0]])
MEAN_PER_CLASS = (3 / 4 + 1 / 2 + 2 / 3) / 3
TOP1 = 6 / 9


def _examples():
  """(labels, predicted) pairs spelling out CONFUSION, in a shuffled order."""
  pairs = [(t, p) for t in range(C) for p in range(C) for _ in range(CONFUSION[t, p])]
  order = np.random.default_rng(0).permutation(len(pairs))
  labels, preds = np.array(pairs)[order].T
  return labels.astype(np.int32), preds


def _batches(labels, preds, batch_size):
  """Padded, masked batches whose 'image' is the logits themselves (one-hot of the prediction)."""
  out = []
  for start in range(0, len(labels), batch_size):
    lab, pred = labels[start:start + batch_size], preds[start:start + batch_size]
    pad = batch_size - len(lab)
    logits = np.eye(C, dtype=np.float32)[np.concatenate([pred, np.full(pad, 3)])]  # padding predicts class 3
    out.append({"image": logits, "label": np.concatenate([lab, np.full(pad, 3, np.int32)]),
                "mask": np.arange(batch_size) < len(lab)})
  return out


class _Linear:
  """A stand-in model: logits = input @ w (the identity gives the batch's one-hot predictions back)."""

  def apply(self, variables, x, train=False):
    del train
    return x @ variables["params"]["w"], {}


_NO_STATS = types.SimpleNamespace(eval_stats=None)  # a method without evaluation statistics


def test_eval_sums_and_summarize_on_a_known_confusion_matrix():
  task = tasks.get("classification")
  labels, preds = _examples()
  totals = {}
  for b in _batches(labels, preds, 4):
    evaluate.accumulate(totals, task.eval_sums(jnp.asarray(b["image"]), b))
  np.testing.assert_array_equal(totals["class_count"], CONFUSION.sum(1))
  np.testing.assert_array_equal(totals["class_correct"], np.diag(CONFUSION))
  assert totals["class_count"].dtype == np.float64 and totals["count"] == 9
  result = evaluate.summarize(task, totals)
  assert result["mean_per_class_accuracy"] == pytest.approx(MEAN_PER_CLASS, abs=1e-12)
  assert result["top1"] == pytest.approx(TOP1, abs=1e-12) and result["num_examples"] == 9
  assert all(isinstance(result[k], float) for k in ("top1", "mean_per_class_accuracy", "loss"))
  empty = task.summarize({"count": 0.0})
  assert np.isnan(empty["mean_per_class_accuracy"]) and empty["num_examples"] == 0


def test_evaluator_reports_mean_per_class_accuracy():
  task = tasks.get("classification")
  labels, preds = _examples()
  evaluator = evaluate.Evaluator(_Linear(), _NO_STATS, task, mesh_lib.make_mesh())
  result = evaluator({"params": {"w": np.eye(C, dtype=np.float32)}}, _batches(labels, preds, 4))
  assert result["mean_per_class_accuracy"] == pytest.approx(MEAN_PER_CLASS, abs=1e-6)
  assert result["top1"] == pytest.approx(TOP1, abs=1e-6) and result["num_examples"] == 9
  assert np.ndim(result["mean_per_class_accuracy"]) == 0 and result["stats"] == {}


def test_shared_feature_evaluation_sums_per_class_vectors_per_run():
  """The sweep's vmapped evaluation: run 0 predicts as the confusion matrix says, run 1 swaps classes 0 and 1."""
  task = tasks.get("classification")
  labels, preds = _examples()
  swap = np.eye(C, dtype=np.float32)[[1, 0, 2, 3]]
  params = {"w": np.stack([np.eye(C, dtype=np.float32), swap])}
  feats = np.eye(C, dtype=np.float32)[preds]
  results = shared_features._evaluate(_Linear(), _NO_STATS, task, params, feats, labels, batch_size=4)
  assert results[0]["mean_per_class_accuracy"] == pytest.approx(MEAN_PER_CLASS, abs=1e-6)
  swapped = np.array([[1, 3, 0, 0], [1, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])  # columns 0 and 1 exchanged
  want = np.mean(np.diag(swapped)[:3] / swapped.sum(1)[:3])
  assert results[1]["mean_per_class_accuracy"] == pytest.approx(want, abs=1e-6)
  assert results[1]["top1"] == pytest.approx(np.trace(swapped) / 9, abs=1e-6)


def test_fgvc_run_writes_mean_per_class_accuracy(tiny_config, fast_compile, tmp_path):
  vpt_folder(tmp_path / "data", n_train=6, n_val=4, n_test=6)
  config = tiny_config("linear", "task=fgvc/cub", dataset=dict(root=str(tmp_path / "data")))
  assert (config.dataset.split, config.dataset.augment, config.dataset.num_classes) == ("train+val", "vpt_crop", 200)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "results.json") as f:
    on_disk = json.load(f)
  assert on_disk["task"] == "fgvc/cub" and on_disk["train_split"] == "train+val"
  assert on_disk["num_train_examples"] == 10 and on_disk["num_eval_examples"] == 6
  for key in ("top1", "mean_per_class_accuracy"):
    assert 0.0 <= on_disk[key] <= 1.0 and on_disk[key] == results[key]
  with open(os.path.join(tmp_path, "run", "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evals = [r for r in rows if "eval/mean_per_class_accuracy" in r]
  assert evals and all(not isinstance(v, (list, dict)) for r in rows for v in r.values())
