"""MET's per-exit accuracies in results.json (`exit_top1`), and vector method statistics in the evaluator."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_adapt import curve, methods, tasks, train
from vit_adapt.data import pipeline
from vit_adapt.train import evaluate, results as results_lib


def test_vector_statistic_is_a_masked_average_per_component():
  """A (B, K) statistic sums over the real examples only (padding masked) and averages into K values."""
  task = tasks.get("classification")
  method = types.SimpleNamespace(
      eval_stats=lambda logits, out, targets: {"first": out["v"][:, 0], "vec": out["v"] * targets[:, :1]})
  v = jnp.array([[1., 2., 3.], [4., 5., 6.], [7., 8., 9.]])
  model = types.SimpleNamespace(apply=lambda variables, x, train: (jnp.zeros((3, 2)), {"v": v}))
  batch = {"image": jnp.zeros((3, 1)), "label": jnp.array([0, 0, 1]), "mask": jnp.array([True, False, True])}
  sums = jax.jit(evaluate.make_eval_step(model, method, task))({}, batch)
  result = evaluate.summarize(task, evaluate.accumulate({}, jax.device_get(sums)))
  np.testing.assert_allclose(result["stats"]["vec"], [0.5, 1.0, 1.5])  # example 1 is padding, example 2 label 1
  assert result["stats"]["first"] == pytest.approx(4.0)
  built = results_lib.build(
      types.SimpleNamespace(dataset=types.SimpleNamespace(name="t", eval_split="test", split="train"), seed=0),
      types.SimpleNamespace(name="m"), task, evaluation=result, num_train=1, steps=1, final_train_loss=None,
      efficiency={}, num_devices=1, wall_time_s=0.0)
  assert built["vec"] == [0.5, 1.0, 1.5] and "vec" in built["method_stats"]
  json.dumps(built)


def test_trained_met_run_reports_each_exits_top1(tiny_config, fast_compile, tmp_path):
  # eval batch 64 over the 360 test digits: the last batch is padded.
  config = tiny_config("met", train=dict(steps=3), eval=dict(batch_size=64))
  config.method.exits = (1, 2)
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  exit_top1 = on_disk["exit_top1"]
  assert exit_top1 == results["exit_top1"] and "exit_top1" in on_disk["method_stats"]
  assert len(exit_top1) == 2 and all(isinstance(a, float) for a in exit_top1)
  # No thresholds yet: the exit rule is the last exit.
  assert on_disk["top1"] == pytest.approx(exit_top1[-1], abs=1e-12)

  # Independently: every exit's logits from the saved model's full pass on the evaluation split.
  cfg, model, _, variables = methods.load_model_dir(os.path.join(workdir, "model"))
  dense = model.clone(thresholds=(), inference="last")
  apply = jax.jit(lambda v, x: dense.apply(v, x, train=False)[1]["exit_logits"])
  correct, n = np.zeros(2), 0
  for batch in pipeline.eval_batches(cfg, cfg.dataset.eval_split, batch_size=100):
    keep = np.asarray(batch["mask"], bool)
    pred = np.argmax(np.asarray(apply(variables, batch["image"])), -1)[:, keep]
    correct += np.sum(pred == np.asarray(batch["label"])[keep][None], axis=1)
    n += int(keep.sum())
  assert n == on_disk["num_eval_examples"]
  assert exit_top1 == pytest.approx(list(correct / n), abs=1e-12)

  # And what `python -m vit_adapt.curve` reports as the single-exit points.
  rows = curve.run([workdir], str(tmp_path / "curve"), values=(1.0,), split=cfg.dataset.eval_split)
  singles = [r["accuracy"] for r in rows if r["kind"] == "exit"]
  assert exit_top1 == pytest.approx(singles, abs=1e-12)

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evals = [json.loads(line) for line in f if "eval/stats/exit_top1/0" in line]
  assert evals and evals[-1]["eval/stats/exit_top1/1"] == pytest.approx(exit_top1[1], abs=1e-6)
