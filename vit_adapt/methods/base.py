"""The method interface and the registry (string name -> Method).

A method is a model class (a `VisionTransformer` subclass returning `(logits, out)`), the regexes that select
its trainable parameters, its config fields with defaults, and optionally its own loss terms. The trainer,
`convert`, `predict` and the efficiency report only talk to this interface.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections

from vit_adapt.registry import Registry
# Re-exported: a method's parameters are split by its `trainable` regexes.
from vit_adapt.models.params import flatten, merge_params, split_params, unflatten  # noqa: F401


@dataclasses.dataclass
class LossInputs:
  """What a method's loss sees for one batch.

  `task_loss(logits)` is the task's loss of any logits of this batch against its targets (cross-entropy with
  soft targets for classification): a method adds its own terms to it, or applies it to several outputs (DyT's
  complete pass, MET's exits). `forward(**kwargs)` re-runs the model on the same inputs with the same parameters
  (DyT's complete-model pass uses it); `labels` are the task's targets, e.g. soft labels (B, C).

  `batch_mean(name, value)`: a loss term that is a non-linear function of a mean over the whole batch (DyT's
  rate loss (mean(masks) - r)^2) passes that mean through it. Without gradient accumulation it returns `value`;
  with `config.train.accum_steps` > 1 the step first computes each named mean over all micro-batches and
  `batch_mean` then returns the global mean with the gradient of this micro-batch's mean, so the accumulated
  update equals the large-batch one. Terms that are means of per-example values need nothing: the step averages
  the micro-batch losses.
  """
  logits: jax.Array
  out: dict
  labels: jax.Array
  forward: Callable[..., tuple[jax.Array, dict]]
  config: ml_collections.ConfigDict  # config.method
  train: bool
  task_loss: Callable[[jax.Array], jax.Array]
  batch_mean: Callable[[str, jax.Array], jax.Array] = lambda name, value: value


def as_number(x):
  """A config number as a float; a per-run value traced in a packed sweep (a JAX array) as it is."""
  return float(x) if isinstance(x, (int, float)) else x


def task_loss_only(inp: LossInputs):
  """The default method loss: the task's loss alone (logged as 'ce')."""
  ce = inp.task_loss(inp.logits)
  return ce, {"ce": ce}


# ----------------------------------------------------------------------------------------------------------
# Budget knob: the one setting of a method that trades accuracy for inference compute without retraining.
# `python -m vit_adapt.curve` sweeps it and plots accuracy against average GMACs, so methods with very different
# mechanisms land on one plot. A knob maps a trained model (`KnobContext`) and a knob value to the config and
# variables of the model at that value (`apply`); the curve command builds that model and evaluates it through
# its own inference path. A knob may also give a faster exact evaluation of a whole sweep (`sweep`) and extra
# points (`extras`, e.g. MET's single exits).

@dataclasses.dataclass
class KnobContext:
  """One trained model being swept."""
  config: ml_collections.ConfigDict
  model: Any
  variables: dict
  split: str            # evaluation split
  calib_split: str      # held-out split for calibrated knobs ('' = the knob's default)
  batch_size: int
  cache: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Knob:
  label: str                                                   # what the value means (CSV column 'knob')
  default_values: Callable[[KnobContext], Sequence[float]]
  apply: Callable[[KnobContext, float], tuple[ml_collections.ConfigDict, dict]]
  # Optional exact fast path for a whole sweep: (ctx, values) -> rows {'value', 'gmacs', 'accuracy', ...}.
  sweep: Callable[[KnobContext, Sequence[float]], list[dict]] | None = None
  # Optional extra points (ctx) -> rows with a 'kind' other than 'sweep' (e.g. 'exit').
  extras: Callable[[KnobContext], list[dict]] | None = None


def with_method_fields(config, **fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.method.update(fields)
  return config


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  model_cls: type
  # Regexes over '/'-joined parameter paths; a parameter trains if any matches (re.search).
  trainable: Sequence[str]
  # Returns the method's config fields with their defaults (the block under `config.method`).
  defaults: Callable[[], ml_collections.ConfigDict]
  # (config.method, backbone kwargs) -> extra keyword arguments of `model_cls` (beyond the backbone's).
  model_kwargs: Callable[[ml_collections.ConfigDict, dict], dict] = lambda c, backbone: {}
  loss: Callable[[LossInputs], tuple[jax.Array, dict]] = task_loss_only
  # Optional hook run once on freshly initialised+loaded params: (params, config) -> params.
  post_load: Callable[[dict, ml_collections.ConfigDict], dict] | None = None
  # Extra RNG streams the model draws from in training (e.g. 'gumbel'); 'dropout' is always provided.
  rng_streams: Sequence[str] = ()
  # Optional per-example evaluation statistics from the inference pass: (logits, out, targets) -> {name: (B,)
  # array, or (B, K): K values per example}; `targets` as the task's `targets(batch, num_classes)` gives them
  # (one-hot (B, C) for classification). The trainer averages them over the valid (unpadded) evaluation
  # examples and reports them in results.json (a (B, K) statistic as a list of K averages), e.g. DyT's
  # 'activation_rate', 'gmacs' for methods whose compute depends on the input, MET's per-exit 'exit_top1'.
  eval_stats: Callable[[jax.Array, dict, jax.Array], dict[str, jax.Array]] | None = None
  # Optional precomputed-input training (SynQT's frozen-feature cache), see FeatureCache.
  feature_cache: "FeatureCache | None" = None
  # The trainable part reads only the frozen backbone's pre-logits (a linear probe): a sweep trains such runs
  # together on features computed once (`vit_adapt.sweep.shared_features`), when nothing else makes the
  # features differ (augmentation, dropout).
  shares_frozen_features: bool = False
  # The accuracy-vs-compute knob `python -m vit_adapt.curve` sweeps (None: the method's compute is fixed).
  budget_knob: Knob | None = None
  # `config.method` fields added after configs of this method were first saved, with the value that reproduces
  # how those older configs ran; filled into a stored config (a model directory) that lacks them.
  legacy: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # Packed sweeps (`vit_adapt.train.packed`): `config.method` fields that enter the model and the loss only as
  # numbers (no shape, no Python branch), so runs packed into one program may differ in them (each run's value
  # is traced); their `model_kwargs` must pass them through `as_number`, not `float`.
  traced_fields: Sequence[str] = ()
  # ... and fields that only set initial parameter values (each packed run initialises its own parameters).
  init_fields: Sequence[str] = ()
  doc: str = ""


@dataclasses.dataclass(frozen=True)
class FeatureCache:
  """Training on precomputed frozen features instead of images (SynQT's cache).

  `iterator(config, workdir, model, variables)` builds or verifies the cache and returns a checkpointable
  training iterator that replaces the image pipeline's, or None when the config turns caching off. Its batches
  carry 'features' (passed to the model in place of 'image') and 'label' [, 'soft_label'].
  A sweep lets runs whose cached features agree share one cache: `enabled(config)` says whether a run caches,
  `key_fields` are the `config.method` fields the features depend on (beyond model and data), and
  `dir_field` is the `config.method` field that points a run at a shared cache directory ('' = its own).
  """
  iterator: Callable[[ml_collections.ConfigDict, str, Any, dict], Any]
  enabled: Callable[[ml_collections.ConfigDict], bool]
  key_fields: Sequence[str] = ()
  dir_field: str = ""


_METHODS: Registry[Method] = Registry(
    "method", lambda name, known: f"config.method.name={name!r} is not a method. Known methods: {', '.join(known)}.")
register = _METHODS.register
# `vit_adapt.methods.get` / `names` (which first import every method) are the public way.
lookup = _METHODS.get
registered = _METHODS.names
