"""The vit_adapt model directory: a self-describing trained model that `predict` (and `model.init`) can load.

  DIR/config.json    the resolved experiment config (`config.to_json_best_effort()`)
  DIR/meta.json      format version, parameter scope, method, framework versions, parameter count
  DIR/variables/     an orbax `StandardCheckpointer` tree of the model variables

Scope 'full' stores every parameter. Scope 'trainable' stores only the trainable sub-tree (by the method's
regexes) plus the non-parameter collections (e.g. batch statistics); the frozen rest is rebuilt on load by
`vit_adapt.methods.init_variables`, i.e. from `config.model.init` (the backbone checkpoint) or, for a
backbone trained from a seeded random init, from `config.seed`. The trainer exports its adapter-only result
this way into `WORKDIR/model/`; a workdir is accepted wherever a model directory is.

This module is the format (write, find, validate, restore); it never builds a model. Building and loading a
method's model from a directory is `vit_adapt.methods.save_model_dir` / `load_model_dir`.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

import vit_adapt
from vit_adapt.checkpoints import readers
from vit_adapt.errors import UserError
from vit_adapt.models import params as params_lib

FORMAT = "vit_adapt.model"
VERSION = 1
SCOPES = ("full", "trainable")


def _versions() -> dict:
  return {"jax": jax.__version__, "flax": flax.__version__, "orbax": ocp.__version__,
          "vit_adapt": getattr(vit_adapt, "__version__", "unknown")}


def _to_numpy(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def save(directory: str, config: ml_collections.ConfigDict, variables: dict, *, scope: str = "full",
         trainable: Sequence[str] = (), meta: dict | None = None) -> str:
  """Writes a model directory; `variables` = {'params': ..., other collections}. Returns the absolute path.

  Scope 'trainable' keeps the parameters matching the `trainable` regexes (the method's). `meta` adds
  provenance fields to meta.json (e.g. what `convert` read).
  """
  if scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
  directory = os.path.abspath(os.fspath(directory))
  # In a multi-process job every process joins the orbax save (a collective); only the first writes the files.
  lead = jax.process_index() == 0
  os.makedirs(directory, exist_ok=True)
  if lead and os.path.exists(os.path.join(directory, "meta.json")):  # overwriting: incomplete until rewritten
    os.remove(os.path.join(directory, "meta.json"))
  variables = {k: v for k, v in dict(variables).items() if v}
  stored = dict(variables)
  if scope == "trainable":
    stored["params"], _ = params_lib.split_params(variables["params"], trainable)
    stored = {k: v for k, v in stored.items() if v}
  if lead:
    with open(os.path.join(directory, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  info = {"format": FORMAT, "version": VERSION, "scope": scope, "method": config.method.name,
          "variant": config.model.variant, "collections": sorted(stored),
          "num_params": int(sum(np.prod(np.shape(x)) for x in traverse_util.flatten_dict(
              dict(stored.get("params", {}))).values())),
          "versions": _versions(), **(meta or {})}
  if config.model.get("init") and os.path.exists(config.model.init):
    # A trainable-scope directory rebuilds its backbone from model.init: remember where it was, so a relative
    # path still resolves when the directory is used from another working directory.
    info["model_init_abspath"] = os.path.abspath(config.model.init)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(directory, "variables"), _to_numpy(stored), force=True)
  ckptr.wait_until_finished()
  # meta.json last: its presence marks a complete directory.
  if lead:
    with open(os.path.join(directory, "meta.json"), "w") as f:
      json.dump(info, f, indent=2, sort_keys=True)
  return directory


def is_model_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "meta.json")) and os.path.isfile(os.path.join(path, "config.json"))


def resolve_model_dir(path: str) -> str:
  """A model directory, or a training workdir holding one in `model/`."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise UserError(f"checkpoint {path} does not exist.")
  for candidate in (path, os.path.join(path, "model")):
    if os.path.isdir(candidate) and is_model_dir(candidate):
      return candidate
  raise UserError(f"{path} is not a vit_adapt model directory (no meta.json + config.json, nor a model/ "
                  "sub-directory of a finished training run). Make one with `python -m vit_adapt.convert` or "
                  "by training with `python -m vit_adapt.main`.")


def _read_json_object(path: str) -> dict:
  """A JSON object from `path`; an empty, truncated or non-object file is a UserError naming it."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path} is not readable JSON ({type(e).__name__}: {e}); the model directory is damaged or "
                    "was written incompletely. Write it again (`python -m vit_adapt.convert`, or re-run the "
                    "training that exported it).") from None
  if not isinstance(obj, dict):
    raise UserError(f"{path} holds a JSON {type(obj).__name__}, not an object; the model directory is damaged. "
                    "Write it again (`python -m vit_adapt.convert`, or re-run the training that exported it).")
  return obj


def read_config(directory: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_tuples(_read_json_object(os.path.join(directory, "config.json"))))


def _tuples(node):
  """JSON arrays back to tuples (configs hold tuples, e.g. optim.policies)."""
  if isinstance(node, dict):
    return {k: _tuples(v) for k, v in node.items()}
  if isinstance(node, list):
    return tuple(_tuples(v) for v in node)
  return node


def open_dir(path: str) -> tuple[str, dict]:
  """-> (absolute model directory, its meta.json) of a model directory or a workdir holding one in `model/`."""
  directory = os.path.abspath(resolve_model_dir(path))
  meta = _read_json_object(os.path.join(directory, "meta.json"))
  if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION or meta.get("scope") not in SCOPES:
    raise UserError(f"{directory}/meta.json describes {meta.get('format')} version {meta.get('version')} scope "
                    f"{meta.get('scope')}; this vit_adapt reads {FORMAT} up to version {VERSION}. Upgrade vit_adapt.")
  return directory, meta


def restore(directory: str) -> dict:
  """The stored variables (numpy), as saved: every parameter, or only the trainable ones."""
  try:
    stored = ocp.StandardCheckpointer().restore(os.path.join(directory, "variables"))
  except Exception as e:  # orbax raises a variety of types for a damaged directory
    raise UserError(f"could not restore the variables of {directory} ({type(e).__name__}: {e}).") from None
  stored = _to_numpy(dict(stored))
  readers.check_finite(traverse_util.flatten_dict(stored, sep="/"), f"{directory}/variables")
  return stored


def check_structure(directory, stored, expected, flat: bool = False) -> None:
  """The stored tree must have exactly the names and shapes the config's model has."""
  def names(tree):
    out = {}
    for col, sub in dict(tree).items():
      items = dict(sub).items() if flat else traverse_util.flatten_dict(dict(sub), sep="/").items()
      out.update({f"{col}/{k}": tuple(np.shape(v)) for k, v in items})
    return out
  have, want = names(stored), names(expected)
  problems = [f"missing {k} {want[k]}" for k in sorted(set(want) - set(have)) if not flat]
  problems += [f"unexpected {k} {have[k]}" for k in sorted(set(have) - set(want))]
  problems += [f"mis-shaped {k} {have[k]} vs {want[k]}" for k in sorted(set(have) & set(want)) if have[k] != want[k]]
  if problems:
    raise UserError(f"{directory} does not match the model its config.json builds:\n  " + "\n  ".join(problems))
