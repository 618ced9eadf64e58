r"""Tables and plots of a sweep's results:

  python -m vit_adapt.report runs/dyt_vtab [--out=runs/dyt_vtab/report]

What it writes: `vit_adapt.sweep.report`.
"""

from absl import flags

from vit_adapt import cli
from vit_adapt.errors import UserError
from vit_adapt.sweep.report import make_report

_OUT = flags.DEFINE_string("out", None, "Output directory (default <dir>/report).")
_PLOTS = flags.DEFINE_bool("plots", True, "Draw the PNG plots.")


def main(argv):
  if len(argv) != 2:
    raise UserError("usage: python -m vit_adapt.report DIR [--out=DIR/report]")
  rep = make_report(argv[1], _OUT.value, _PLOTS.value)
  print(rep["markdown"])
  print("wrote " + ", ".join(rep["files"]))


if __name__ == "__main__":
  cli.run(main)
