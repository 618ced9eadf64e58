r"""Turn a foreign checkpoint into a self-describing vit_adapt model directory.

  python -m vit_adapt.convert --source=timm --checkpoint=vit_tiny.safetensors \
      --config=configs/linear_vtab.py:task=vtab/dtd --config.model.variant=Ti/16 --out=models/ti_dtd

Sources: `npz` (Google .npz, any layout), `timm` (timm / Hugging Face .safetensors, .pth, .bin) and the
`official-<method>` importers the methods register (checkpoints trained with the papers' PyTorch code).

The shapes of the checkpoint tell the architecture (width, depth, heads, MLP width, patch, resolution), the class
count and, through the source, the method's own sizes (bottleneck, number of queries, ...). They must agree with
the config: any contradiction is one error that says which `--config.x=y` to pass. A checkpoint that holds only
the trained parameters of a method (no backbone) takes its backbone from `--config.model.init`.

The output (`--out`) is a full-scope model directory (config.json, meta.json, orbax variables) that
`python -m vit_adapt.predict --checkpoint=DIR` and `--config.model.init=DIR` read.
"""

from __future__ import annotations

import os

from absl import flags, logging
from ml_collections import config_flags

from vit_adapt import cli
from vit_adapt.errors import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defined when run as a program only, so the library functions below import without flag clashes."""
  config_flags.DEFINE_config_file("config", None, "Experiment config the model is built from: configs/X.py[:args].")
  flags.DEFINE_string("source", None, "Checkpoint source: npz, timm, or official-<method>.")
  flags.DEFINE_string("checkpoint", None, "The foreign checkpoint file (.npz, .safetensors, .pth, .bin).")
  flags.DEFINE_string("out", None, "Output model directory.")


_COLLECTIONS = ("batch_stats",)
_ARCH = ("width", "depth", "num_heads", "mlp_dim", "patch_size")


def architecture_contradictions(info: dict, config, heads_known: bool = True) -> list[str]:
  """What the backbone shapes (`merge.describe`) say against config.model / config.dataset.

  `heads_known=False` (timm / Hugging Face files, whose fused qkv does not store the head count): the variant is
  inferred from width and MLP width and advised by name (`--config.model.variant=S/16`), so the head count is
  the standard one; a non-standard width needs `--config.model.num_heads` from the user.
  """
  from vit_adapt.checkpoints import merge
  from vit_adapt.models import vit
  m = config.model
  want = vit.decode_variant(m.variant, width=m.get("width", 0), depth=m.get("depth", 0),
                            mlp_dim=m.get("mlp_dim", 0), num_heads=m.get("num_heads", 0))
  problems = []
  differ = [k for k in _ARCH if k in info and info[k] != getattr(want, k)]
  named = merge.variant_name(info)
  standard = "/" in named
  if differ:
    have = ", ".join(f"{k}={info[k]}" for k in _ARCH if k in info)
    if not heads_known:
      have += " (the head count is not stored in a timm / Hugging Face file)"
    fix = " ".join(f"--config.model.{k}={info[k]}" for k in differ if k != "patch_size")
    hint = f"--config.model.variant={named}" if standard else fix
    if standard and "depth" in differ:
      hint += f" --config.model.depth={info['depth']}"
    if not heads_known and not standard:
      hint = (f"{hint} --config.model.num_heads=N: the width {info.get('width')} is not a standard ViT's, so the "
              "head count cannot be inferred; take N from the model's card")
    problems.append(f"the checkpoint is a ViT with {have}; the config builds {m.variant} "
                    f"({', '.join(f'{k}={getattr(want, k)}' for k in differ)}). Pass {hint or fix}.")
  elif not heads_known and standard and not m.get("num_heads", 0):
    heads = vit._HEADS[named.split("/")[0]]  # pylint: disable=protected-access
    if heads != want.num_heads:
      problems.append(f"the checkpoint's width {info['width']} and MLP width {info.get('mlp_dim')} are ViT-{named}'s, "
                      f"which has {heads} heads; the config builds {m.variant} with {want.num_heads} heads (a timm "
                      f"/ Hugging Face file does not store the head count). Pass --config.model.variant={named}, "
                      "or --config.model.num_heads=N if the checkpoint really has N heads.")
  if info.get("grid") and "patch_size" in info and info["grid"] * info["patch_size"] != m.image_size:
    size = info["grid"] * info["patch_size"]
    problems.append(f"the checkpoint's position embedding is a {info['grid']}x{info['grid']} grid ({size} px); "
                    f"config.model.image_size={m.image_size}. Pass --config.model.image_size={size} (resample "
                    "later by fine-tuning at another size with --config.model.init).")
  n = info.get("num_classes")
  if n is not None and n != config.dataset.num_classes:
    problems.append(f"the checkpoint's head has {n} classes; config.dataset.num_classes="
                    f"{config.dataset.num_classes}. Pass --config.dataset.num_classes={n} (or the matching task).")
  return problems


def apply_inferred(config, inferred: dict) -> list[str]:
  """Fills config fields a source inferred where the config leaves them unset; returns the contradictions."""
  problems = []
  for path, value in inferred.items():
    *parents, leaf = path.split(".")
    node = config
    try:
      for p in parents:
        node = node[p]
      current = node[leaf]
    except KeyError:
      problems.append(f"the checkpoint needs config.{path}={value!r}, which this config does not have "
                      f"(is --config the right method? it is {config.method.name!r}).")
      continue
    if current in (None, "", -1):
      node[leaf] = value
    elif _differs(current, value):
      problems.append(f"the checkpoint says {path}={value!r}; the config has {current!r}. "
                      f"Pass --config.{path}={value}.")
  return problems


def _differs(a, b) -> bool:
  if isinstance(a, float) or isinstance(b, float):
    try:
      return abs(float(a) - float(b)) > 1e-6 * max(1.0, abs(float(b)))
    except (TypeError, ValueError):
      return True
  return a != b


def convert(source: str, checkpoint: str, config, out: str) -> str:
  """Library form of the CLI: returns the written model directory."""
  from flax import traverse_util

  from vit_adapt import checkpoints, methods
  from vit_adapt.checkpoints import merge, sources
  fn = checkpoints.get_source(source)
  tensors = checkpoints.read_tensors(checkpoint)
  tree, inferred = fn(tensors, config)
  # Non-parameter collections (e.g. a BatchNorm head's running statistics) come as top-level 'batch_stats'.
  collections = {k: tree[k] for k in _COLLECTIONS if k in tree}
  params = {k: v for k, v in tree.items() if k not in collections}

  flat = traverse_util.flatten_dict(params, sep="/") if params else {}
  heads_known = sources.encodes_heads(tensors)
  info = merge.describe(flat, heads_known)
  problems = apply_inferred(config, inferred) + architecture_contradictions(info, config, heads_known)
  if problems:
    raise UserError(f"checkpoint {checkpoint} (--source={source}) contradicts the config:\n  - " +
                    "\n  - ".join(problems))
  has_backbone = "embedding/kernel" in flat
  if not has_backbone and not config.model.init:
    raise UserError(f"checkpoint {checkpoint} holds no backbone weights (only {len(flat)} trained parameters, e.g. "
                    f"{sorted(flat)[:3]}); pass the backbone it was trained from with --config.model.init=PATH.")

  model, method = methods.build_model(config)
  variables = dict(methods.init_variables(model, method, config, load_backbone=not has_backbone))
  variables["params"] = merge.merge(params, variables["params"], source=checkpoint,
                                    partial_backbone=not has_backbone, heads_known=heads_known)
  for name, col in collections.items():
    if name not in variables:
      raise UserError(f"checkpoint {checkpoint} has {name} statistics but the model built from the config has "
                      f"none: check config.method ({config.method.name}).")
    variables[name] = merge.merge(col, variables[name], source=f"{checkpoint} [{name}]", allow_head_reinit=False)
  logging.info("Converted %s (%s) for method %s.", checkpoint, source, config.method.name)
  return methods.save_model_dir(out, config, variables, scope="full",
                               meta={"converted_from": os.path.abspath(checkpoint), "source": source})


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  missing = [f"--{n}" for n in ("source", "checkpoint", "out") if not getattr(FLAGS, n)]
  if FLAGS.config is None:
    missing.append("--config")
  if missing:
    raise UserError(f"missing {', '.join(missing)}. Usage: python -m vit_adapt.convert --source=SOURCE "
                    "--checkpoint=PATH --config=configs/X.py [--config.field=value ...] --out=DIR")
  from vit_adapt import checkpoints
  checkpoints.get_source(FLAGS.source)  # an unknown source fails before any file is read
  out = convert(FLAGS.source, FLAGS.checkpoint, FLAGS.config, FLAGS.out)
  print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
