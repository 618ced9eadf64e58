"""A method's model from an experiment config: build it, initialise it, save and load it as a model directory.

The model directory format itself (files, versions, structure checks) is `vit_adapt.checkpoints.model_dir`,
which knows nothing of methods; this module adds what only the method registry knows: the model class, the
trainable patterns of a 'trainable'-scope directory, and how the frozen rest is rebuilt on load.
"""

from __future__ import annotations

import contextlib
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from vit_adapt import checkpoints
from vit_adapt.checkpoints import model_dir as model_dir_lib
from vit_adapt.methods import base
from vit_adapt.models import dense
from vit_adapt.models import params as params_lib
from vit_adapt.models import remat
from vit_adapt.models import video, vit


def build_model(config, num_classes: int | None = None):
  """-> (model, method) for a full experiment config (`config.model`, `config.method`, `config.dataset`)."""
  method = base.lookup(config.method.name)
  n = num_classes if num_classes is not None else config.dataset.num_classes
  kwargs = vit.backbone_kwargs(config.model, n)
  model_cls, kind = method.model_cls, video_kind(config)
  if kind != "none":  # the method's model inside a clip model (models/video.py); its kwargs before the method's
    model_cls = video.video_model(kind, model_cls)
    kwargs.update(video.video_kwargs(kind, config.video))
  kwargs.update(method.model_kwargs(config.method, kwargs))
  model_cls, kwargs = dense.apply_head(config.model, model_cls, kwargs)  # config.model.head
  policy = config.model.get("remat", "")
  if policy:
    kwargs["block_cls"] = remat.remat_block(kwargs.get("block_cls", vit.Encoder1DBlock), policy)
  return model_cls(**kwargs), method


def video_kind(config) -> str:
  """config.video.model ('none' for image models and for configs saved before the video block existed)."""
  block = config.get("video")
  return block.get("model", "none") if block is not None else "none"


def _init_rngs(method, seed: int) -> dict:
  rng = jax.random.PRNGKey(seed)
  return {"params": rng, "dropout": rng, **{s: rng for s in method.rng_streams}}


def _example_input(config):
  size = config.model.image_size
  if video_kind(config) != "none":
    return jnp.zeros((1, int(config.video.num_frames), size, size, 3), jnp.float32)
  return jnp.zeros((1, size, size, 3), jnp.float32)


def fill_legacy_fields(config) -> None:
  """A stored config from before some of its method's fields existed gets the values it ran with."""
  method = base.lookup(config.method.name)
  for name, value in method.legacy.items():
    if name not in config.method:
      with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
        config.method[name] = value
      logging.info("config.method.%s is not in the stored config (saved before it existed): using %r, how it ran",
                   name, value)


@functools.lru_cache(maxsize=16)
def _compiled_init(model):
  # Equal models (hashable Linen dataclasses) share one compiled `init`: the runs of a packed sweep, which
  # differ in their seeds only, compile it once instead of once per run.
  return jax.jit(model.init)


def init_variables(model, method, config, *, load_backbone: bool = True):
  """Initialises `model` from `config.seed` and loads the backbone checkpoint `config.model.init` (if set).

  Deterministic in the seed: a run whose frozen backbone is random (the demo) rebuilds the same weights when
  its adapter-only checkpoint is reloaded.
  """
  variables = dict(_compiled_init(model)(_init_rngs(method, config.seed), _example_input(config)))
  params = variables["params"]
  init = config.model.init
  if load_backbone and init:
    if os.path.isdir(init):  # a vit_adapt model directory (or a training workdir holding one)
      _, _, _, trained = load_model_dir(init)
      params = checkpoints.merge_model_params(trained["params"], params, source=init)
    else:
      params = checkpoints.load_backbone(init, params, config=config)
  if method.post_load is not None:
    params = method.post_load(params, config)
  variables["params"] = params
  return variables


def abstract_variables(model, method, config):
  """The variables' shapes and dtypes, without computing them."""
  return jax.eval_shape(model.init, _init_rngs(method, 0), _example_input(config))


def save_model_dir(directory: str, config: ml_collections.ConfigDict, variables: dict, scope: str = "full",
                   meta: dict | None = None) -> str:
  """Writes a model directory (scope 'full', or 'trainable': the method's trainable parameters only)."""
  method = base.lookup(config.method.name)
  return model_dir_lib.save(directory, config, variables, scope=scope, trainable=method.trainable, meta=meta)


def load_model_dir(path: str):
  """-> (config, model, method, variables) of a model directory (or a workdir with `model/`).

  A 'trainable'-scope directory gets its frozen rest from `init_variables` (the backbone checkpoint or the seed).
  """
  directory, meta = model_dir_lib.open_dir(path)
  config = model_dir_lib.read_config(directory)
  fill_legacy_fields(config)
  model, method = build_model(config)
  stored = model_dir_lib.restore(directory)
  if meta["scope"] == "full":
    model_dir_lib.check_structure(directory, stored, abstract_variables(model, method, config))
    return config, model, method, stored
  init = config.model.get("init")
  if init and not os.path.exists(init) and os.path.exists(meta.get("model_init_abspath", "")):
    config.model.init = meta["model_init_abspath"]
  variables = init_variables(model, method, config)
  params = params_lib.flatten(variables["params"])
  trained = params_lib.flatten(stored.pop("params", {}))
  model_dir_lib.check_structure(directory, {"params": trained},
                                {"params": {p: params[p] for p in trained if p in params}}, flat=True)
  params.update(trained)
  return config, model, method, {**dict(variables), **stored, "params": params_lib.unflatten(params)}
