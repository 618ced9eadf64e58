"""Peak memory of the compiled training step of the complete-dataset recipes under the memory levers.

DyT's complete-dataset recipe trains at a global batch of 1024 and Sparse-Tuning's at 512 (ViT-B/16 at 224).
For each recipe and each setting of `config.train.accum_steps` (micro-batches per step) and `config.model.remat`
(per-block rematerialisation) this compiles the trainer's own training step (`train_step_memory`: forward,
backward, AdamW update, donated state) for one device at the recipe's global batch and prints XLA's memory
analysis (arguments + outputs + temporaries). Compile only: nothing is allocated or run, so a CPU gives the
figures (stated as 'XLA CPU memory analysis'; a GPU's compiler lays buffers out differently, expect the same
order of magnitude). A setting fits a 16 GB device when its peak leaves 1 GiB of the 16 GiB for the runtime.

  python experiments/train_memory.py                                  # both recipes, the settings below
  python experiments/train_memory.py --recipes=dyt --settings=1:,8:dots  # accum_steps:remat pairs

Prints one markdown table (pasted into the recipes' docstrings: configs/dyt_vtab.py, configs/sparse_tuning_vtab.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

import jax  # noqa: E402

from vit_adapt import methods  # noqa: E402
from vit_adapt.efficiency import measure  # noqa: E402
from vit_adapt.train import step as train_step  # noqa: E402

GIB = 2 ** 30
FITS_GIB = 15.0  # of a 16 GiB device, 1 GiB left to the runtime (cuDNN workspaces, the input pipeline's buffers)
RECIPES = {"dyt": "configs/dyt_vtab.py:task=cifar100,complete",
           "sparse_tuning": "configs/sparse_tuning_vtab.py:task=cifar100,complete"}
SETTINGS = "1:,4:,8:,32:,64:"


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("recipe", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


def peak_bytes(config) -> int:
  model, method = methods.build_model(config)
  variables = methods.abstract_variables(model, method, config)
  return train_step.train_step_memory(config, model, method, variables)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated keys of RECIPES")
  parser.add_argument("--settings", default=SETTINGS, help="comma-separated accum_steps:remat pairs")
  args = parser.parse_args()
  device = measure.device_description()
  print(f"XLA {jax.devices()[0].platform.upper()} memory analysis ({device}), jax {jax.__version__}, one device, "
        "ViT-B/16 at 224, float32")
  print("| recipe | global batch | accum_steps | micro-batch | remat | peak GiB | fits 16 GB |")
  print("|---|---|---|---|---|---|---|")
  for name in args.recipes.split(","):
    config = load_config(RECIPES[name])
    for setting in args.settings.split(","):
      accum, _, remat = setting.partition(":")
      config.train.accum_steps, config.model.remat = int(accum), remat
      t0 = time.time()
      peak = peak_bytes(config) / GIB
      batch = config.train.batch_size
      print(f"| {name} | {batch} | {accum} | {batch // int(accum)} | {remat or 'off'} | {peak:.2f} | "
            f"{'yes' if peak <= FITS_GIB else 'no'} |", flush=True)
      print(f"  (compiled in {time.time() - t0:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
  main()
