r"""Frozen-feature sharing: several linear-probe runs on one task trained together on features computed once.

When a method's trainable parameters never change the backbone's computation on the image tokens, the frozen
features of every training and evaluation image are the same in every run of a sweep over the method's
optimiser settings or seeds. This module computes them once (the pre-logits of the frozen backbone, in the
order of the split) and trains all runs of the group in one process:

  * runs that differ only in `seed` train in lockstep under `jax.vmap` (stacked head parameters, optimizer
    states and per-run batches of feature rows);
  * runs with different optimiser or schedule settings (learning rate, weight decay, epochs...) each get their
    own vmapped step; steps of equal length and batch size are fused into one jitted call per step.

It is exact, not an approximation: each run sees the same batches in the same order as `vit_adapt.train` would
give it (the same grain shuffle of the same split indices, reproduced here on the indices), starts from the same
head initialisation, and is updated by the trainer's own `make_train_step` (loss, AdamW, schedule, policies),
applied to a head-only model over the cached features. The result equals separate `train_and_evaluate` runs up to
floating-point rounding (the backbone is compiled as a separate program); tests/test_shared_features.py checks it.

Eligible (everything else runs on its own, unchanged):
  method 'linear'; `dataset.augment='none'`, `mixup=cutmix=0` (training images are the plain resized images);
  `model.dropout=drop_path=0` (the frozen backbone is deterministic in training mode); a single process.
The group key holds every setting the features depend on (model, dataset, the seed when the backbone is random,
i.e. `model.init=''`); groups need at least two runs.

Each run directory gets the trainer's files: `results.json` (with a `shared_features` entry describing the
group), `config.json`, `metrics.jsonl` and a final checkpoint in the trainer's format. The group's features are
cached in `<workdir>/_shared/.../features_<split>.npz`, so an interrupted group job restarts from them.

  python -m vit_adapt.shared_features --group=<workdir>/_shared/<...>/group.json   (written by vit_adapt.sweep)
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vit_adapt import config_lib, methods, tasks
from vit_adapt.data import pipeline, transforms
from vit_adapt.efficiency import report as efficiency
from vit_adapt.errors import UserError
from vit_adapt.models import params as params_lib
from vit_adapt.sweep import grid as sweep_grid
from vit_adapt.sweep import jobs as sweep_jobs
from vit_adapt.train import checkpoints as train_checkpoints
from vit_adapt.train import evaluate, optim
from vit_adapt.train import results as results_lib
from vit_adapt.train import step as train_state
from vit_adapt.train import workdir as workdir_lib
from vit_adapt.train import writers as reporting

GROUP_FILE = "group.json"


# ------------------------------------------------------------------------------------------------ configs
def ineligible_reason(config) -> str | None:
  """Why a run cannot share frozen features (None = it can)."""
  if not methods.get(config.method.name).shares_frozen_features:
    return f"method {config.method.name!r} trains inside the backbone"
  m = config.model
  if _augments(config):
    return "training images are augmented or mixed"
  if m.dropout > 0 or m.drop_path > 0:
    return "the frozen backbone is stochastic in training (dropout / drop_path)"
  return None


def feature_key(config, method_fields: Sequence[str] | None = None) -> str:
  """Everything the cached features depend on, as a canonical JSON string.

  `method_fields`: the method fields that matter (None = all of them, the conservative choice).
  """
  c = config.to_dict()
  dataset = {k: v for k, v in c["dataset"].items() if k not in ("label_smoothing", "num_threads", "prefetch")}
  method = c["method"] if method_fields is None else {k: c["method"].get(k) for k in method_fields}
  key = {"model": c["model"], "dataset": dataset, "eval": c["eval"], "efficiency": c["efficiency"],
         "method": method}
  if not c["model"]["init"]:
    key["seed"] = c["seed"]  # a random backbone is drawn from the seed
  return json.dumps(key, sort_keys=True, default=str)


def plan_groups(runs: Sequence[sweep_grid.Run]) -> list[list[sweep_grid.Run]]:
  """Groups of >= 2 runs that can share features; runs whose config fails to load are left out (they run on
  their own and report their error there)."""
  groups = sweep_jobs.by_config_key(runs, lambda c: feature_key(c) if ineligible_reason(c) is None else None)
  return [[run for run, _ in g] for g in groups if len(g) >= 2]


def _augments(config) -> bool:
  d = config.dataset
  return d.augment != "none" or d.mixup > 0 or d.cutmix > 0


def _cache_key(config) -> str | None:
  """The feature key of a run that trains on its method's own feature cache and may share it (None = not)."""
  cache = methods.get(config.method.name).feature_cache
  if (cache is None or not cache.dir_field or not cache.enabled(config)
      or config.method.get(cache.dir_field) or _augments(config)):
    return None
  return feature_key(config, ("name",) + tuple(cache.key_fields))


def plan_feature_caches(runs: Sequence[sweep_grid.Run], workdir: str) -> dict[str, tuple[str, str, str]]:
  """run name -> (shared cache dir, name of the group's first run, the config field naming the cache dir).

  A method that trains on its own cache of frozen image features (`Method.feature_cache`, e.g. SynQT's:
  fingerprinted by the frozen weights and the data, resumable) lets runs of a sweep whose features agree point
  at one shared cache directory; the first run of each group builds the cache and the others start after it,
  reusing it. Runs that set their own cache directory or augment their images are left alone.
  """
  plan = {}
  for group in sweep_jobs.by_config_key(runs, _cache_key):
    if len(group) < 2:
      continue
    (leader, config), key = group[0], _cache_key(group[0][1])
    method = config.method.name
    field = methods.get(method).feature_cache.dir_field
    cache_dir = os.path.join(workdir, "_shared", f"{method}_cache", hashlib.sha1(key.encode()).hexdigest()[:12])
    for run, _ in group:
      plan[run.name] = (cache_dir, leader.name, field)
  return plan


def group_dir(workdir: str, runs: Sequence[sweep_grid.Run]) -> str:
  return sweep_jobs.job_dir(workdir, "_shared", runs, ordered=False)


def group_command(python: str, workdir: str, runs: Sequence[sweep_grid.Run], gdir: str) -> list[str]:
  """Writes the group file and returns the job's command line."""
  return sweep_jobs.job_command(python, workdir, runs, gdir, GROUP_FILE, "vit_adapt.shared_features", "group")


# ------------------------------------------------------------------------------------------------ features
def _head_model(model):
  """The classifier alone, as a model over features: same `head` module (name, init, dtype) as the backbone."""

  class HeadOnFeatures(nn.Module):
    num_classes: int
    dtype: Any

    @nn.compact
    def __call__(self, features, train: bool = False):
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(features)
      return logits.astype(jnp.float32), {"pre_logits": features}

  return HeadOnFeatures(num_classes=model.num_classes, dtype=model.dtype)


def compute_features(config, model, variables, split: str, cache: str | None = None):
  """-> (features (N, D) in split order, labels (N,)): pre-logits of the frozen backbone, cached in `cache`."""
  if cache and os.path.isfile(cache):
    with np.load(cache, allow_pickle=False) as z:
      return z["features"], z["labels"]
  # Evaluation batches of the split: its records in index order, resized and normalised exactly like training
  # images are when nothing is augmented (eligibility), padded to a static batch shape and masked.
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False)[1]["pre_logits"])
  feats, labels = [], []
  for batch in pipeline.eval_batches(config, split, process_index=0, process_count=1):
    mask = np.asarray(batch["mask"], bool)
    feats.append(np.asarray(jax.device_get(fn(variables, batch["image"])))[mask])
    labels.append(np.asarray(batch["label"])[mask])
  feats, labels = np.concatenate(feats), np.concatenate(labels).astype(np.int32)
  if cache:
    tmp = cache + ".tmp.npz"
    np.savez(tmp, features=feats, labels=labels)
    os.replace(tmp, cache)
  return feats, labels


# ------------------------------------------------------------------------------------------------ training
def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _unstack(tree, n: int):
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def _subgroup_key(config) -> str:
  """Runs whose configs differ only in `seed` share one optimizer and schedule: they train under one vmap."""
  c = config.to_dict()
  c.pop("seed")
  return json.dumps(c, sort_keys=True, default=str)


class _Subgroup:
  """Runs with identical training settings (seeds differ): one vmapped train step over stacked states."""

  def __init__(self, idx, configs, heads, head_model, method, task, num_train: int):
    self.idx = idx
    c = configs[idx[0]]
    self.config = c
    _, self.total_steps, warmup = optim.schedule_lengths(c, num_train)
    self.batch_size = int(c.train.batch_size)
    trainables = []
    for i in idx:
      trainable, frozen = optim.split_trainable({"head": heads[configs[i].seed]}, method, c.optim)
      trainables.append(trainable)
    self.frozen = frozen
    self.tx, self.schedule = optim.make_optimizer(c.optim, trainables[0], self.total_steps, warmup)
    states = [train_state.create(t, {}, self.tx, configs[i].seed) for t, i in zip(trainables, idx)]
    self.state = jax.device_put(_stack(states))
    step = train_state.make_train_step(head_model, method, c, self.tx, self.schedule, task)
    self.vstep = jax.vmap(step, in_axes=(0, None, 0))
    self.order = _stack([pipeline.example_order(num_train, self.batch_size, configs[i].seed, self.total_steps)
                         for i in idx])
    self.smoothing = float(c.dataset.label_smoothing)


def _make_bundle_step(subgroups):
  """One jitted call per step for all subgroups of equal length: gathers each run's feature rows on device.

  `soft_labels` maps a label smoothing to the smoothed one-hot rows of the training split, exactly what the
  pipeline's batches carry (`transforms.smooth_one_hot`)."""

  def bundle_step(states, feats, labels, soft_labels, rows):
    out_states, out_metrics = [], []
    for sg, state, r in zip(subgroups, states, rows):
      batch = {"image": feats[r], "label": labels[r]}  # (R, b, ...)
      if sg.smoothing > 0:
        batch["soft_label"] = soft_labels[sg.smoothing][r]
      s, m = sg.vstep(state, sg.frozen, batch)
      out_states.append(s)
      out_metrics.append(m)
    return tuple(out_states), tuple(out_metrics)

  return jax.jit(bundle_step, donate_argnums=0)


def _evaluate(head_model, method, task, params_stacked, feats, labels, batch_size: int) -> list[dict]:
  """The trainer's masked evaluation (`train.evaluate`) per run, over padded batches of eval features."""
  step = jax.jit(jax.vmap(evaluate.make_eval_step(head_model, method, task), in_axes=(0, None)))
  n = len(labels)
  totals: dict[str, np.ndarray] = {}  # each sum with a leading runs axis (scalars: (runs,), per class: (runs, C))
  for start in range(0, n, batch_size):
    f, lab = feats[start:start + batch_size], labels[start:start + batch_size]
    pad = batch_size - len(lab)
    mask = np.concatenate([np.ones(len(lab), bool), np.zeros(pad, bool)])
    f = np.concatenate([f, np.zeros((pad,) + f.shape[1:], f.dtype)])
    lab = np.concatenate([lab, np.zeros(pad, lab.dtype)])
    batch = {"image": f, "label": lab, "mask": mask}
    evaluate.accumulate(totals, jax.device_get(step({"params": params_stacked}, batch)))
  runs = len(totals["count"])
  return [evaluate.summarize(task, {k: v[i] for k, v in totals.items()}) for i in range(runs)]


def train_group(specs: list[dict], gdir: str) -> list[dict]:
  """Trains the group's runs that have no results.json yet; returns their results."""
  t_start = time.time()
  if jax.process_count() > 1:
    raise UserError("shared-feature training runs in one process; run multi-host jobs with --share_features=off.")
  todo = [s for s in specs if not workdir_lib.results_match(
      s["workdir"], sweep_grid.load_config(s["config"], s["overrides"]))]
  if not todo:
    logging.info("every run of the group has results.json; nothing to do")
    return []
  os.makedirs(gdir, exist_ok=True)
  configs = [sweep_grid.load_config(s["config"], s["overrides"]) for s in todo]
  for c in configs:
    config_lib.validate(c)
  keys = {feature_key(c) for c in configs}
  reasons = [r for r in (ineligible_reason(c) for c in configs) if r]
  if len(keys) != 1 or reasons:
    raise UserError(f"group {gdir}: its runs cannot share features ({reasons or 'different feature settings'}).")
  c0 = configs[0]

  # ------------------------------------------------------------------------------------------- backbone
  model, method = methods.build_model(c0)
  task = tasks.for_config(c0)
  heads, variables0 = {}, None
  for c in configs:  # the head each seed starts from, exactly as the trainer initialises it
    if c.seed not in heads:
      v = dict(methods.init_variables(model, method, c))
      heads[c.seed] = v["params"]["head"]
      variables0 = variables0 or v
  head_model = _head_model(model)

  # ------------------------------------------------------------------------------------------- features
  t0 = time.time()
  train_f, train_y = compute_features(c0, model, variables0, c0.dataset.split,
                                      os.path.join(gdir, f"features_{c0.dataset.split}.npz"))
  eval_f, eval_y = compute_features(c0, model, variables0, c0.dataset.eval_split,
                                    os.path.join(gdir, f"features_{c0.dataset.eval_split}.npz"))
  feature_time = time.time() - t0
  num_train = len(train_y)
  logging.info("features: %s %d x %d, %s %d (%.1fs)", c0.dataset.split, num_train, train_f.shape[1],
               c0.dataset.eval_split, len(eval_y), feature_time)
  dtype = model.dtype
  feats_dev = jax.device_put(train_f.astype(np.float32)).astype(dtype)
  labels_dev = jax.device_put(train_y)
  smoothings = {float(c.dataset.label_smoothing) for c in configs} - {0.0}
  soft_dev = {s: jax.device_put(transforms.smooth_one_hot(train_y, head_model.num_classes, s)) for s in smoothings}

  # ------------------------------------------------------------------------------------------- train
  by_key: dict[str, list[int]] = {}
  for i, c in enumerate(configs):
    by_key.setdefault(_subgroup_key(c), []).append(i)
  subgroups = [_Subgroup(idx, configs, heads, head_model, method, task, num_train) for idx in by_key.values()]
  bundles: dict[tuple, list] = {}
  for sg in subgroups:
    bundles.setdefault((sg.total_steps, sg.batch_size), []).append(sg)
  # The last `log_every_steps` losses of each run (the trainer's final_train_loss is their mean).
  losses = {i: collections.deque(maxlen=max(int(c.train.log_every_steps), 1)) for i, c in enumerate(configs)}
  writers = {i: reporting.JsonlWriter(os.path.join(todo[i]["workdir"], "metrics.jsonl")) for i in range(len(todo))}
  for i, s in enumerate(todo):
    os.makedirs(s["workdir"], exist_ok=True)
    reporting.write_json(os.path.join(s["workdir"], "config.json"), configs[i].to_dict())
  for (total_steps, _), sgs in bundles.items():
    step_fn = _make_bundle_step(sgs)
    states = tuple(sg.state for sg in sgs)
    for t in range(total_steps):
      rows = tuple(jax.device_put(sg.order[:, t]) for sg in sgs)
      states, metrics = step_fn(states, feats_dev, labels_dev, soft_dev, rows)
      for sg, m in zip(sgs, metrics):
        for j, i in enumerate(sg.idx):
          losses[i].append(m["loss"][j])
      if (t + 1) % max(int(c0.train.log_every_steps), 1) == 0 or t + 1 == total_steps:
        for sg, m in zip(sgs, jax.device_get(metrics)):
          for j, i in enumerate(sg.idx):
            writers[i].write_scalars(t + 1, {f"train/{k}": float(np.asarray(v)[j]) for k, v in m.items()})
    for sg, st in zip(sgs, states):
      sg.state = st

  # ------------------------------------------------------------------------------------------- eval + report
  finished = []
  eff_cache: dict[int, dict] = {}
  for sg in subgroups:
    evals = _evaluate(head_model, method, task, {"head": sg.state.params["head"]}, eval_f.astype(np.float32),
                      eval_y, int(sg.config.eval.batch_size))
    finals = _unstack(jax.device_get(sg.state), len(sg.idx))
    for j, i in enumerate(sg.idx):
      c, spec, state = configs[i], todo[i], finals[j]
      params = params_lib.merge_params(state.params, {k: v for k, v in variables0["params"].items()
                                                         if k != "head"})
      batch_key = int(c.train.batch_size)
      if batch_key not in eff_cache:
        local = jax.device_put({"params": params}, jax.local_devices()[0])
        memory = train_state.train_step_memory(c, model, method, local, task)
        eff_cache[batch_key] = efficiency.report(c, model, local, example_input=task.example_input,
                                                 trainable=state.params, eval_stats={},
                                                 train_memory_bytes=memory,
                                                 measure_throughput=c.efficiency.enabled)
      last = [float(x) for x in jax.device_get(list(losses[i]))]
      ckpts = train_checkpoints.TrainCheckpoints(os.path.join(spec["workdir"], "checkpoints"),
                                                 keep=c.train.keep_checkpoints)
      # A final checkpoint in the trainer's format: `vit_adapt.main` on this directory finds the run complete.
      ckpts.save(jax.device_put(state), task.train_iterator(c, seed=c.seed))
      ckpts.wait_until_finished()
      ckpts.close()
      finished.append((c, spec["workdir"], evals[j], sg.total_steps, float(np.mean(last)) if last else None,
                       eff_cache[batch_key]))
  wall = time.time() - t_start
  results = []
  for c, workdir, evaluation, steps, final_loss, eff in finished:
    r = results_lib.build(
        c, method, task, evaluation=evaluation, num_train=num_train, steps=steps, final_train_loss=final_loss,
        efficiency=eff, num_devices=1, wall_time_s=wall / len(finished),  # the group's time, shared equally
        run_fingerprint=workdir_lib.fingerprint(c),
        shared_features={"group": gdir, "runs": len(configs), "feature_time_s": feature_time,
                         "group_wall_time_s": wall})
    workdir_lib.write_run_file(workdir, c, r["wall_time_s"])  # the run's identity, as the trainer records it
    reporting.write_json(results_lib.path(workdir), r)
    print(json.dumps({k: r.get(k) for k in ("task", "method", "seed", task.primary_metric, "steps")}), flush=True)
    results.append(r)
  return results
