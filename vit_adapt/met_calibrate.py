r"""Early-exit thresholds for a trained MET model:

  python -m vit_adapt.met_calibrate --checkpoint=/tmp/met_demo --budget=0.6

What it computes and where it writes: `vit_adapt.methods.met.calibrate`.
"""

from vit_adapt import cli
from vit_adapt.errors import UserError
from vit_adapt.methods.met.calibrate import calibrate, format_table

def main(argv):
  from absl import flags
  flags_ = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  if not flags_.checkpoint:
    raise UserError("--checkpoint=DIR is required (a MET model directory or its training workdir).")
  try:
    dist = tuple(float(x) for x in flags_.distribution.split(",")) if flags_.distribution else ()
  except ValueError:
    raise UserError(f"--distribution={flags_.distribution!r}: give comma-separated numbers, e.g. 0.4,0.3,0.2,0.1,0")
  table = calibrate(flags_.checkpoint, split=flags_.split, budget=flags_.budget, gmacs=flags_.gmacs, q=flags_.q,
                    distribution=dist, confidence=flags_.confidence, batch_size=flags_.batch_size,
                    write=not flags_.dry_run, require_held_out=flags_.require_held_out)
  print(format_table(table, table["exits"], table["exit_gmacs"][-1]))
  print(table["record"])
  if table["warning"]:  # last, where it is seen
    print(f"warning: {table['warning']}")
  if not flags_.dry_run:
    print(f"wrote config.method.thresholds to {table['model_dir']}/config.json")


if __name__ == "__main__":
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "A MET model directory, or a training workdir with model/ inside.")
  flags.DEFINE_string("split", "", "Held-out split to calibrate on (default: val200 for VTAB-1k, else the "
                      "training split).")
  flags.DEFINE_float("budget", 0.0, "Target average GMACs as a fraction of the full network's (e.g. 0.6).")
  flags.DEFINE_float("gmacs", 0.0, "Target average GMACs per image (absolute).")
  flags.DEFINE_float("q", 0.0, "Geometric exit distribution p_k ~ q^k.")
  flags.DEFINE_string("distribution", "", "Explicit exit distribution, comma-separated, one value per exit.")
  flags.DEFINE_string("confidence", "", "max_softmax | entropy (default: the model's config).")
  flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
  flags.DEFINE_bool("dry_run", False, "Print the table without writing the thresholds.")
  flags.DEFINE_bool("require_held_out", False, "Refuse (exit 2) a calibration split that is part of the model's "
                    "training split (default: calibrate anyway, with a warning).")
  cli.run(main)
