r"""Accelerator benchmark suite: every method's inference program and a few training steps at accelerator-sized
batches, as ONE Markdown table with device, dtype, batch, images/s, GMACs per image and MFU.

  python experiments/accelerator_suite.py --out=accelerator_suite.md           # B/16, 224 px, batches 64,256, bf16
  python experiments/accelerator_suite.py --dtype=float32 --batches=64 --out=suite_fp32.md
  python experiments/accelerator_suite.py --variant=Ti/16 --image_size=32 --batches=4 --rounds=1 \
      --train_methods=adapter --out=/tmp/suite_smoke.md                        # a quick smoke test (CPU)

Rows (experiments/programs.py builds every program; random weights):
  inference  each of `programs.names` (dense, DyT `threshold` at `--rate` active, Sparse-Tuning released, MET
             early exits at `--budget`, SynQT, adapter, LoRA, VPT): ahead-of-time compiled `model.apply`.
  train      the trainer's own compiled step (vit_adapt.train.step: forward, the method's loss, gradients of the
             trainable tree, AdamW) for `--train_methods` (default: full fine-tuning, adapter, DyT), on a batch
             of zeros; the state is donated and carried from step to step.
Timing: 2 warm-up calls, then up to `--rounds` timed calls (stopping once `--max_seconds` of timed calls are
spent); images/s of the best call with the median in brackets. Bounds: building one row (compile, calibration)
is cut at `--build_seconds`; with `--max_total_seconds` the remaining rows are skipped once it is spent. The
table is rewritten to `--out` after every row, so a run cut short keeps what it measured.
GMACs per image: the method's own count for input-dependent programs (DyT, MET: the batch average), else the
dot/conv multiply-adds counted by `vit_adapt.efficiency.measure.lowered_gmacs` (for a training step: the whole
step's, forward + backward, per image).
MFU = achieved FLOP/s (2 x GMACs x images/s) / the device's dense peak for the dtype, from `PEAK_TFLOPS` (bf16
tensor-core peaks; float32 peaks are the non-tensor-core FP32 figures, and XLA may use TF32 for float32 matmuls
on NVIDIA GPUs, so float32 MFU can exceed what the figure suggests); '—' for a device not in the table
(`--peak_tflops` sets it by hand).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import programs  # noqa: E402
import bench_timing as timing  # noqa: E402
from vit_adapt.efficiency import measure  # noqa: E402

# Dense peak TFLOP/s by device-kind substring (first match wins; order matters: 'v5 lite' before 'v5').
PEAK_TFLOPS = (
    # (substring of jax's device_kind, bfloat16 / fp16 peak, float32 peak or None)
    ("H200", 989.0, 67.0), ("H100", 989.0, 67.0),  # SXM figures
    ("A100", 312.0, 19.5), ("V100", 125.0, 15.7),  # V100: fp16 tensor cores
    ("L4", 121.0, 30.3), ("T4", 65.0, 8.1),
    ("TPU v5 lite", 197.0, None), ("TPU v5e", 197.0, None), ("TPU v5p", 459.0, None), ("TPU v5", 459.0, None),
    ("TPU v6 lite", 918.0, None), ("TPU v6e", 918.0, None), ("TPU v4", 275.0, None),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """FLOP/s of the device's dense peak for `dtype`, or None when the device is not in `PEAK_TFLOPS`."""
  for name, bf16, fp32 in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      peak = bf16 if dtype == "bfloat16" else fp32
      return peak * 1e12 if peak else None
  return None


def mfu(gmacs: float, images_per_s: float, peak: float | None) -> float | None:
  if not peak or not math.isfinite(gmacs) or not math.isfinite(images_per_s):
    return None
  return 2 * gmacs * 1e9 * images_per_s / peak


def parse(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="B/16")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--batches", default="64,256")
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  ap.add_argument("--programs", default=",".join(programs.names), help="comma-separated, of: " +
                  ", ".join(programs.names) + " ('' for none)")
  ap.add_argument("--train_methods", default=",".join(programs.TRAIN_METHODS),
                  help="comma-separated method names whose training step is timed ('' for none)")
  ap.add_argument("--rounds", type=int, default=10)
  ap.add_argument("--max_seconds", type=float, default=10.0, help="timed seconds per row at most")
  ap.add_argument("--build_seconds", type=float, default=600.0, help="building one row at most (s)")
  ap.add_argument("--max_total_seconds", type=float, default=0.0, help="0: no limit")
  ap.add_argument("--rate", type=float, default=0.5, help="DyT activation rate")
  ap.add_argument("--budget", type=float, default=0.6, help="MET average GMACs / full GMACs")
  ap.add_argument("--peak_tflops", type=float, default=0.0, help="the device's peak for --dtype (0: the table)")
  ap.add_argument("--out", default="", help="also write the Markdown here")
  return ap.parse_args(argv)


HEADER = ["kind", "program", "device", "dtype", "batch", "images/s best (median)", "GMACs/image", "MFU (best)",
          "notes"]


def _inference(name, batch, a):
  def make():
    prog = programs.build(name, variant=a.variant, image_size=a.image_size, batch=batch, dtype=a.dtype,
                          rate=a.rate, budget=a.budget)
    return prog.compile(), {"gmacs": prog.gmacs, "notes": prog.info}
  return make


def _train(method, batch, a):
  def make():
    step = programs.build_train_step(method, variant=a.variant, image_size=a.image_size, batch=batch,
                                     dtype=a.dtype)
    return step.run, {"gmacs": step.gmacs, "notes": "whole step (forward + backward + AdamW)", "label": step.name}
  return make


def main(argv=None) -> str:
  a = parse(argv)
  t_start = time.perf_counter()
  kind = getattr(jax.devices()[0], "device_kind", jax.devices()[0].platform)
  peak = a.peak_tflops * 1e12 if a.peak_tflops else peak_flops(kind, a.dtype)
  device = measure.device_description()
  batches = [int(b) for b in a.batches.split(",") if b]
  jobs = []  # (kind, label, batch, make)
  for b in batches:
    jobs += [("inference", n, b, _inference(n, b, a)) for n in a.programs.split(",") if n]
    jobs += [("train", m, b, _train(m, b, a)) for m in a.train_methods.split(",") if m]
  rows = []
  head = (f"# Accelerator suite: ViT-{a.variant} at {a.image_size} px, {a.dtype}\n\n"
          f"- device: {device}; jax {jax.__version__}; peak used for MFU: "
          f"{f'{peak / 1e12:g} TFLOP/s' if peak else '— (device not in the table)'}\n"
          f"- random weights, {programs.NUM_CLASSES} classes; DyT at {a.rate:.2f} activation, MET at budget "
          f"{a.budget:.2f}; best (median) of up to {a.rounds} calls after 2 warm-up calls\n\n")

  def write() -> str:
    text = head + timing.markdown_table(HEADER, rows) + "\n"
    if a.out:
      with open(a.out, "w") as f:
        f.write(text)
    return text

  for job_kind, label, b, make in jobs:
    if job_kind == "inference" and label not in programs.SPECS:
      rows.append([job_kind, label, device, a.dtype, b, f"error: unknown program; known: {', '.join(programs.names)}",
                   "—", "—", ""])
    elif a.max_total_seconds and time.perf_counter() - t_start > a.max_total_seconds:
      rows.append([job_kind, label, device, a.dtype, b, "skipped (--max_total_seconds spent)", "—", "—", ""])
    else:
      print(f"[{job_kind} {label} batch {b}]", flush=True)
      t = timing.prepare(f"{job_kind} {label} batch {b}", make, sync=jax.block_until_ready, batch=b,
                         limit_s=a.build_seconds)
      timing.interleaved([t], a.rounds, a.max_seconds)
      t.run = None  # free the program's buffers before the next row
      gm = t.info.get("gmacs", math.nan)
      u = mfu(gm, t.per_s("best"), peak)
      rows.append([job_kind, t.info.get("label", label), device, a.dtype, b, t.cell(),
                   f"{gm:.4g}" if math.isfinite(gm) else "—", f"{100 * u:.1f} %" if u is not None else "—",
                   t.info.get("notes", "")])
    write()
  text = write()
  print("\n" + text, flush=True)
  return text


if __name__ == "__main__":
  main()
