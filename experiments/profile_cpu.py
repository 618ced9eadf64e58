r"""Which XLA CPU options (and which formulations) make our programs faster, measured in one process.

  python experiments/profile_cpu.py --programs=dense --options=default,no_ynn,ynn_eltwise --rounds=7
  python experiments/profile_cpu.py --programs=dense,dyt\ threshold --torch --official_dyt=/work/ref/dyt
  python experiments/profile_cpu.py --programs=dense --options=default --dump=/tmp/hlo   # + optimized HLO, fusions

XLA's CPU options are debug options of the compiler, so one process can compile the same lowered program under
several option sets (`Lowered.compile(compiler_options=...)`) and time them in interleaved rounds (one call of each
per round: a load change on this shared machine hits every variant alike), optionally next to the PyTorch reference
of bench_vs_pytorch.py (`--torch`). Each variant's output is compared with the default compile's (max |diff| of the
logits), so an option that changes the numbers shows it. The option sets are named in OPTION_SETS; the package's own
defaults (vit_adapt/machine.py, `XLA_CPU_DEFAULTS`) apply to every variant, since they are in XLA_FLAGS before JAX starts: run with
VIT_ADAPT_XLA_CPU_DEFAULTS=0 to measure from XLA's own defaults.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bench_timing as timing  # noqa: E402
import bench_vs_pytorch as bvp  # noqa: E402
import programs  # noqa: E402

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_T = "LIBRARY_FUSION_TYPE_"
# name -> compiler options (XLA DebugOptions fields) on top of the process's XLA_FLAGS.
OPTION_SETS = {
    "default": {},                                                  # what XLA_FLAGS says (+ the package's)
    "ynn": {_YNN: f"{_T}DOT"},                                      # jaxlib 0.10's own default: YNNPACK dots
    "no_ynn": {_YNN: ""},                                           # dots through XLA's own (Eigen) kernels
    "ynn_eltwise": {_YNN: f"{_T}DOT,{_T}ELTWISE"},                  # + elementwise ops inside YNNPACK
    "ynn_eltwise_reduce": {_YNN: f"{_T}DOT,{_T}ELTWISE,{_T}REDUCE"},
    "xnn": {_YNN: "", "xla_cpu_experimental_xnn_fusion_type": f"{_T}DOT"},
    # oneDNN dot fusions: its compile aborts the whole process ("partition compile failed") on DyT's program.
    "onednn": {_YNN: "", "xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_fusion_type": f"{_T}DOT"},
    "fast_math": {"xla_cpu_enable_fast_math": True},
}


def parse(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--programs", default="dense")
  ap.add_argument("--options", default="default,no_ynn,ynn_eltwise", help="of: " + ", ".join(OPTION_SETS))
  ap.add_argument("--variant", default="B/16")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--rate", type=float, default=0.5)
  ap.add_argument("--budget", type=float, default=0.6)
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--max_seconds", type=float, default=60.0)
  ap.add_argument("--torch", action="store_true", help="also time bench_vs_pytorch.py's PyTorch reference")
  ap.add_argument("--official_dyt", default="")
  ap.add_argument("--official_sparse_tuning", default="")
  ap.add_argument("--dump", default="", help="write each variant's optimized HLO here")
  return ap.parse_args(argv)


def fusion_kinds(hlo_text: str) -> dict:
  """Fusions of an optimized HLO module by (kind, library): where the time can go."""
  kinds = collections.Counter()
  for line in hlo_text.splitlines():
    if " fusion(" in line and "kind=" in line:
      kind = line.split("kind=")[1].split(",")[0]
      lib = line.split('"kind":"')[1].split('"')[0] if '"kind":"' in line else ""
      kinds[f"{kind}{'/' + lib if lib else ''}"] += 1
  return dict(kinds)


def main(argv=None):
  a = parse(argv)
  names = [n.strip() for n in a.programs.split(",") if n.strip()]
  sets = [o.strip() for o in a.options.split(",") if o.strip()]
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average {os.getloadavg()}", flush=True)
  if a.torch:
    s = bvp.setup(bvp.parse([f"--variant={a.variant}", f"--image_size={a.image_size}", f"--batch={a.batch}",
                             f"--rate={a.rate}", f"--budget={a.budget}", f"--official_dyt={a.official_dyt}",
                             f"--official_sparse_tuning={a.official_sparse_tuning}"]))
    torch_side = bvp.TorchSide(s)
  for name in names:
    prog = programs.build(name, variant=a.variant, image_size=a.image_size, batch=a.batch, dtype="float32",
                          rate=a.rate, budget=a.budget)
    lowered = jax.jit(prog.fn()).lower(prog.variables, prog.images)
    ref, timers = None, []
    for o in sets:
      def make(o=o):
        compiled = lowered.compile(compiler_options=OPTION_SETS[o])
        if a.dump:
          os.makedirs(a.dump, exist_ok=True)
          with open(os.path.join(a.dump, f"{name.replace(' ', '_')}.{o}.hlo.txt"), "w") as f:
            f.write(compiled.as_text())
        run = lambda: compiled(prog.variables, prog.images)
        return run, {"fusions": fusion_kinds(compiled.as_text()), "out": np.asarray(run()[0])}
      t = timing.prepare(f"{name} [{o}]", make, sync=jax.block_until_ready, batch=a.batch)
      if t.ok or t.run is not None:
        ref = t.info["out"] if ref is None else ref
        t.info["diff"] = float(np.abs(t.info["out"] - ref).max())
      timers.append(t)
    if a.torch:
      timers.append(torch_side.timer(torch_side.key_for(name), "eager fp32", prog.config))
    timing.interleaved(timers, a.rounds, a.max_seconds)
    base = timers[0]
    print(f"\n[{name}] load average {os.getloadavg()}")
    rows = [[t.name, t.cell(), timing.ratio_cell(t, base), f"{t.info.get('diff', float('nan')):.2e}",
             t.info.get("fusions", "")] for t in timers]
    print(timing.markdown_table(["variant", "img/s best (median)", f"vs {base.name} best (median)",
                                 "max |logits diff|", "fusions"], rows), flush=True)
    for t in timers:
      t.run = None


if __name__ == "__main__":
  main()
