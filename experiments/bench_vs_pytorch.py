r"""vit_adapt (JAX) against PyTorch on the same machine, in one process: every method's inference program against
timm's dense ViT and, when a checkout is passed, against the official DyT / Sparse-Tuning models.

  python experiments/bench_vs_pytorch.py --out=bench_vs_pytorch.md                  # CPU: B/16, 224 px, batch 8
  python experiments/bench_vs_pytorch.py --official_dyt=/path/Dynamic-Tuning \
      --official_sparse_tuning=/path/Sparse-Tuning --out=bench_vs_pytorch.md           # + the official models
  python experiments/bench_vs_pytorch.py --variant=Ti/16 --image_size=64 --rounds=1 \
      --programs=dense,dyt\ threshold --out=/tmp/smoke.md                              # a quick smoke test

What runs (random weights; see experiments/programs.py for how each program is built and calibrated):
  ours      each program of `programs.names` (dense, DyT `threshold` at `--rate` active, Sparse-Tuning released
            (keep 0.7 at blocks 3, 6, 9, fusion), MET early exits at `--budget`, SynQT, adapter, LoRA, VPT),
            compiled ahead of time, in float32 (CPU) or bfloat16 and float32 (GPU; `--dtypes`).
  PyTorch   timm's dense `vit_base_patch16_224` (the variant's timm model) at the same image size and batch; for
            DyT / Sparse-Tuning the official model imported from `--official_dyt` / `--official_sparse_tuning`
            instead (experiments/torch_programs.py: same batch, same activation rate / keep rate). On CPU:
            eager float32. On GPU (torch sees CUDA and jax's backend is gpu): eager float32 against our float32,
            eager fp16 autocast (the official codes' path) and `torch.compile` (default mode) under fp16 autocast
            against our bfloat16. A failing side (import, compile, guard failure) prints its error in its cell.
  micro     `--micro` (default on): matmul 1576x768x3072, exact-erf GELU on 8x197x3072 (the model's: vit.gelu), the
            attention core softmax(QK^T/8)V on 8x12x197x64 (the model's: vit.fused_attention), float32, jax.jit vs
            torch (the issue's list).

Timing: per program, our programs and their PyTorch references are timed in `--rounds` interleaved rounds (one
call each per round, after 2 warm-up calls), so a load change hits both sides alike; cells are images/s of the
best round (timeit's estimator) with the median in brackets; ratio = ours / PyTorch (> 1: ours is faster).
Bounds: a side stops after `--max_seconds` of timed calls; building a side (compile, calibration, torch.compile
warm-up) is cut at `--build_seconds`; with `--max_total_seconds` the remaining programs are skipped once the
budget is spent. The table is rewritten to `--out` after every program, so a run cut short keeps its rows.
GMACs: per image, the method's own count for input-dependent programs (DyT, MET: average over the batch),
else the lowered program's dot/conv multiply-adds, the same on every backend (vit_adapt.efficiency.measure).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

# JAX and PyTorch share the GPU in this process: keep JAX from preallocating most of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import programs  # noqa: E402
import bench_timing as timing  # noqa: E402
import torch_programs  # noqa: E402
from vit_adapt.efficiency import measure  # noqa: E402
from vit_adapt.models import vit  # noqa: E402

GPU_MODES = ("eager fp32", "eager fp16 autocast", "compile fp16 autocast")


def parse(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="B/16")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--batch", type=int, default=0, help="0: 64 on GPU, 8 on CPU")
  ap.add_argument("--dtypes", default="", help="our compute dtypes; '': bfloat16,float32 on GPU, float32 on CPU")
  ap.add_argument("--programs", default=",".join(programs.names), help="comma-separated, of: " +
                  ", ".join(programs.names))
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--max_seconds", type=float, default=20.0, help="timed seconds per side at most")
  ap.add_argument("--build_seconds", type=float, default=600.0, help="building one side at most (s)")
  ap.add_argument("--max_total_seconds", type=float, default=0.0, help="0: no limit")
  ap.add_argument("--rate", type=float, default=0.5, help="DyT activation rate (ours and the official model)")
  ap.add_argument("--budget", type=float, default=0.6, help="MET average GMACs / full GMACs")
  ap.add_argument("--official_dyt", default="", help="checkout of NUS-HPC-AI-Lab/Dynamic-Tuning")
  ap.add_argument("--official_sparse_tuning", default="", help="checkout of liuting20/Sparse-Tuning")
  ap.add_argument("--torch_compile", default="auto", choices=("auto", "on", "off"),
                  help="time torch.compile (auto: on GPU only)")
  ap.add_argument("--micro", default=True, action=argparse.BooleanOptionalAction)
  ap.add_argument("--out", default="", help="also write the Markdown here")
  return ap.parse_args(argv)


@dataclasses.dataclass
class Setup:
  args: argparse.Namespace
  gpu: bool
  batch: int
  dtypes: list
  modes: list
  torch_dev: object
  backbone: dict
  t0: float = dataclasses.field(default_factory=time.perf_counter)

  def over_budget(self) -> bool:
    a = self.args
    return bool(a.max_total_seconds) and time.perf_counter() - self.t0 > a.max_total_seconds


def setup(args) -> Setup:
  torch, _ = torch_programs.import_torch_timm()
  gpu = torch.cuda.is_available() and jax.default_backend() == "gpu"
  if gpu:
    torch.backends.cudnn.benchmark = True  # as the official speed script
  batch = args.batch or (64 if gpu else 8)
  dtypes = [d for d in args.dtypes.split(",") if d] or (["bfloat16", "float32"] if gpu else ["float32"])
  compile_on = args.torch_compile == "on" or (args.torch_compile == "auto" and gpu)
  modes = [m for m in (GPU_MODES if gpu else ("eager fp32",)) if compile_on or not m.startswith("compile")]
  if compile_on and not gpu:
    modes.append("compile fp32")
  mc = programs.experiment_config("linear", variant=args.variant, image_size=args.image_size, dtype="float32").model
  return Setup(args, gpu, batch, dtypes, modes, torch_programs.device(),
               vit.backbone_kwargs(mc, programs.NUM_CLASSES))


def our_dtype_for(mode: str, dtypes: list) -> str:
  """Our side of a PyTorch mode: float32 against float32, bfloat16 against fp16 autocast."""
  want = "float32" if "fp32" in mode else "bfloat16"
  return want if want in dtypes else dtypes[0]


# ------------------------------------------------------------------------------------------------------------
# The PyTorch reference of each program.

class TorchSide:
  """PyTorch models by reference key, built once; timers per (key, mode) are fresh for each program group."""

  def __init__(self, s: Setup):
    self.s, self.models, self.runners, self.x = s, {}, {}, None

  def key_for(self, name: str) -> str:
    a = self.s.args
    if name == "dyt threshold" and a.official_dyt:
      return "official_dyt"
    if name == "sparse_tuning released" and a.official_sparse_tuning:
      return "official_sparse_tuning"
    return "timm"

  def model(self, key: str, prog_config):
    if key not in self.models:
      s, a = self.s, self.s.args
      if self.x is None:
        self.x = torch_programs.images(s.batch, a.image_size).to(s.torch_dev)
      if key == "timm":
        self.models[key] = torch_programs.timm_dense(s.backbone, programs.NUM_CLASSES, a.variant)
      elif key == "official_dyt":
        self.models[key] = torch_programs.official_dyt(
            a.official_dyt, backbone=s.backbone, num_classes=programs.NUM_CLASSES,
            bottleneck=int(prog_config.method.bottleneck), rate=a.rate, x=self.x)
      else:
        m = prog_config.method
        self.models[key] = torch_programs.official_sparse_tuning(
            a.official_sparse_tuning, backbone=s.backbone, num_classes=programs.NUM_CLASSES,
            sparse_blocks=tuple(m.sparse_blocks), keep_rate=float(m.keep_rate), fuse_token=bool(m.fuse_token),
            device_=s.torch_dev)
    return self.models[key]

  def timer(self, key: str, mode: str, prog_config) -> timing.Timer:
    def make():
      if (key, mode) not in self.runners:  # one torch.compile per model and mode, reused by later programs
        model, label = self.model(key, prog_config)
        self.runners[key, mode] = (*torch_programs.runner(model, self.x, mode), label)
      run, sync, label = self.runners[key, mode]
      return run, {"label": label, "sync": sync}
    return timing.prepare(f"{key} ({mode})", make, batch=self.s.batch, limit_s=self.s.args.build_seconds)


# ------------------------------------------------------------------------------------------------------------

HEADER = ["program", "ours (dtype)", "ours img/s best (median)", "PyTorch side (mode)", "PyTorch img/s best (median)",
          "ratio ours/PyTorch best (median)", "GMACs/img", "notes"]


def our_timer(name: str, dtype: str, s: Setup) -> timing.Timer:
  a = s.args

  def make():
    prog = programs.build(name, variant=a.variant, image_size=a.image_size, batch=s.batch, dtype=dtype,
                          rate=a.rate, budget=a.budget)
    run = prog.compile()
    return run, {"gmacs": prog.gmacs, "info": prog.info, "config": prog.config}
  return timing.prepare(f"ours {name} ({dtype})", make, sync=jax.block_until_ready, batch=s.batch,
                        limit_s=a.build_seconds)


def program_rows(name: str, s: Setup, torch_side: TorchSide) -> list[list]:
  print(f"[{name}]", flush=True)
  ours = {d: our_timer(name, d, s) for d in s.dtypes}
  config = next((t.info["config"] for t in ours.values() if "config" in t.info), None)
  if config is None:  # our side failed to build: still time the reference with the method's default config
    config = programs.experiment_config(programs.SPECS[name].method, variant=s.args.variant,
                                        image_size=s.args.image_size, dtype="float32",
                                        **programs.SPECS[name].fields)
  key = torch_side.key_for(name)
  theirs = {m: torch_side.timer(key, m, config) for m in s.modes}
  timing.interleaved(list(ours.values()) + list(theirs.values()), s.args.rounds, s.args.max_seconds)
  rows = []
  for mode, t in theirs.items():
    d = our_dtype_for(mode, s.dtypes)
    o = ours[d]
    gm = o.info.get("gmacs")
    rows.append([name, d, o.cell(), f"{t.info.get('label', t.name)} ({mode})", t.cell(), timing.ratio_cell(o, t),
                 f"{gm:.4g}" if gm is not None else "—", o.info.get("info", "")])
  for t in list(ours.values()) + list(theirs.values()):
    t.run = None  # free the compiled programs and device buffers before the next program
  return rows


MICRO = ("matmul 1576x768x3072", "exact GELU 8x197x3072", "attention core 8x12x197x64")


def micro_timers(s: Setup) -> list[tuple[str, timing.Timer, timing.Timer, float]]:
  """-> [(op, ours, theirs, flops per call)] in float32."""
  import torch
  dev = s.torch_dev
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  a, b = jax.random.normal(k[0], (1576, 768)), jax.random.normal(k[1], (768, 3072))
  g = jax.random.normal(k[2], (8, 197, 3072))
  q = jax.random.normal(k[0], (8, 12, 197, 64))
  # Ours: the op the model's attention runs (vit.fused_attention, which takes and returns tokens-major (B, N, H,
  # dh); the layout change is part of the op). Theirs: the (B, H, N, dh) matmul-softmax-matmul of timm's block.
  q_tokens = jnp.swapaxes(q, 1, 2)

  ours_fns = {MICRO[0]: (lambda a, b: a @ b, (a, b)), MICRO[1]: (vit.gelu, (g,)),
              MICRO[2]: (vit.fused_attention, (q_tokens, q_tokens, q_tokens))}
  to_torch = lambda x: torch.from_numpy(np.array(x)).to(dev)
  ta, tb, tg, tq = to_torch(a), to_torch(b), to_torch(g), to_torch(q)
  theirs_fns = {MICRO[0]: lambda: ta @ tb, MICRO[1]: lambda: torch.nn.functional.gelu(tg),
                MICRO[2]: lambda: ((tq / 8.0) @ tq.transpose(-2, -1)).softmax(-1) @ tq}
  flops = {MICRO[0]: 2 * 1576 * 768 * 3072, MICRO[1]: 0.0, MICRO[2]: 2 * 2 * 8 * 12 * 197 * 197 * 64}

  def torch_sync(out):
    if dev.type == "cuda":
      torch.cuda.synchronize()
    return out
  out = []
  for op in MICRO:
    fn, args = ours_fns[op]

    def make_ours(fn=fn, args=args):
      c = jax.jit(fn).lower(*args).compile()
      return (lambda: c(*args)), {}

    def make_theirs(op=op):
      f = theirs_fns[op]
      return (lambda: torch_run(f)), {}
    ours = timing.prepare(f"ours {op}", make_ours, sync=jax.block_until_ready)
    theirs = timing.prepare(f"torch {op}", make_theirs, sync=torch_sync)
    out.append((op, ours, theirs, flops[op]))
  return out


def torch_run(f):
  import torch
  with torch.inference_mode():
    return f()


def micro_table(s: Setup) -> str:
  timers = micro_timers(s)
  timing.interleaved([t for _, o, th, _ in timers for t in (o, th)], max(s.args.rounds, 5) * 4, s.args.max_seconds)
  rows = []
  for op, o, th, flops in timers:
    def cell(t):
      if not t.ok:
        return t.cell()
      ms = (1000 / t.per_s("best"), 1000 / t.per_s("median"))
      gf = f", {flops / ms[0] / 1e6:.0f} GFLOP/s" if flops else ""
      return f"{ms[0]:.2f} ({ms[1]:.2f}){gf}"
    rows.append([op, cell(o), cell(th), timing.ratio_cell(o, th)])
  return timing.markdown_table(["op (float32)", "ours ms best (median)", "PyTorch ms best (median)",
                                "speed ratio ours/PyTorch best (median)"], rows)


def header(s: Setup) -> str:
  import torch
  a = s.args
  tdev = torch.cuda.get_device_name(0) if s.torch_dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
  lines = [f"# vit_adapt (JAX) vs PyTorch: ViT-{a.variant} at {a.image_size} px, batch {s.batch}",
           "",
           f"- JAX device: {measure.device_description()}; jax {jax.__version__}",
           f"- PyTorch device: {tdev}; torch {torch.__version__}, timm {sys.modules['timm'].__version__}",
           f"- ours in {', '.join(s.dtypes)}; PyTorch modes: {', '.join(s.modes)}",
           f"- {a.rounds} interleaved rounds (at most {a.max_seconds:g} timed s per side), best (median) images/s;"
           f" random weights, {programs.NUM_CLASSES} classes; DyT at {a.rate:.2f} activation, MET at budget"
           f" {a.budget:.2f}",
           f"- official DyT: {a.official_dyt or '— (not passed: timm dense instead)'}; official Sparse-Tuning: "
           f"{a.official_sparse_tuning or '— (not passed: timm dense instead)'}", ""]
  return "\n".join(lines)


def main(argv=None) -> str:
  args = parse(argv)
  s = setup(args)
  torch_side = TorchSide(s)
  names = [n.strip() for n in args.programs.split(",") if n.strip()]
  rows, micro = [], ""

  def write() -> str:
    text = header(s) + "\n" + timing.markdown_table(HEADER, rows) + "\n"
    if micro:
      text += "\n## Micro-benchmarks\n\n" + micro + "\n"
    if args.out:
      with open(args.out, "w") as f:
        f.write(text)
    return text

  for name in names:
    if name not in programs.SPECS:
      rows.append([name, "—", f"error: unknown program; known: {', '.join(programs.names)}", "", "", "", "", ""])
    elif s.over_budget():
      rows.append([name, "—", "skipped (--max_total_seconds spent)", "", "", "", "", ""])
    else:
      rows.extend(program_rows(name, s, torch_side))
    write()
  if args.micro:
    micro = "skipped (--max_total_seconds spent)" if s.over_budget() else micro_table(s)
  text = write()
  print("\n" + text, flush=True)
  return text


if __name__ == "__main__":
  main()
