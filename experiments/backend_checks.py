r"""Checks that only an accelerator can answer, in one short run: are the GMACs the same as on the CPU, is cuDNN's
fused attention in use and does it agree with XLA's, how far is bfloat16 from float32.

  python experiments/backend_checks.py                          # ViT-B/16 at 224 (what the docs quote)
  python experiments/backend_checks.py --variant=Ti/16 --image_size=32 --attention_batch=2   # a CPU smoke run

Rows (random weights; experiments/programs.py builds every program):
  GMACs     per image (fvcore convention), counted on the lowered program (vit_adapt.efficiency.measure.lowered_gmacs) with the
            default backend and again with the CPU backend of the same process: the two must be equal. The third
            column tries the old way, a count of the backend-OPTIMISED module, which on GPU holds cuBLAS/cuDNN
            library calls instead of dots: `hlo_macs` refuses it (on CPU it agrees).
  attention cuDNN's fused attention against XLA's on one bfloat16 ViT-B/16 attention input (max abs difference),
            and whether the dense bfloat16 program's compiled module calls cuDNN's fused attention at all (its
            custom-call targets are listed).
  precision dense logits in bfloat16 against float32 on the same weights and images (relative error, argmax
            agreement).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

# Leave room for other programs on a shared accelerator.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import programs  # noqa: E402
from vit_adapt.efficiency import measure  # noqa: E402

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy")


def versions() -> str:
  out = []
  for name in PACKAGES:
    try:
      out.append(f"{name} {importlib.import_module(name).__version__}")
    except ImportError as e:
      out.append(f"{name} missing ({e})")
  return ", ".join(out)


def gmacs_rows(args, rows: list[str], save=lambda: None) -> list[str]:
  """Appends the GMACs table to `rows` one program at a time (calling `save` after each)."""
  cpu = jax.devices("cpu")[0]
  rows += [f"| program | GMACs, lowered on {jax.default_backend()} | GMACs, lowered on cpu | optimised module | time |",
           "|---|---|---|---|---|"]
  for name in args.programs.split(","):
    t = time.perf_counter()
    try:
      prog = programs.build(name, variant=args.variant, image_size=args.image_size, batch=2, dtype="float32")
      fn = lambda v, x: prog.fn()(v, x)[0]  # noqa: E731
      here = measure.lowered_gmacs(fn, prog.variables, prog.images[:1])
      v_cpu, x_cpu = jax.device_put((prog.variables, prog.images[:1]), cpu)
      with jax.default_device(cpu):
        on_cpu = measure.lowered_gmacs(fn, v_cpu, x_cpu)
      try:
        text = jax.jit(fn).lower(prog.variables, prog.images[:1]).compile().as_text()
        optimised = f"{measure.hlo_macs(text, layer_norm=False) / 1e9:.4f} (matmul/conv part)"
      except ValueError as e:  # library calls: refused rather than miscounted
        optimised = "refused: " + str(e).splitlines()[0][:90]
      rows.append(f"| {name} | {here:.4f} | {on_cpu:.4f} | {optimised} | {time.perf_counter() - t:.0f} s |")
    except Exception as e:  # noqa: BLE001 -- one broken row must not hide the others
      rows.append(f"| {name} | error: {type(e).__name__}: {str(e)[:200]} | | | |")
    print(rows[-1], flush=True)
    save()
  return rows


def attention_rows(args) -> list[str]:
  rows = []
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(key, (args.attention_batch, 197, 12, 64), jnp.bfloat16) for key in keys)
  xla = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))(q, k, v)
  try:
    fused = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))(q, k, v)
    diff = float(jnp.max(jnp.abs(fused.astype(jnp.float32) - xla.astype(jnp.float32))))
    rows.append(f"- cuDNN vs XLA attention, bfloat16 {tuple(q.shape)}: max abs difference {diff:.3g}")
  except Exception as e:  # noqa: BLE001 -- no cuDNN here (CPU, TPU, an old cuDNN)
    rows.append(f"- cuDNN attention unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
  prog = programs.build("dense", variant=args.variant, image_size=args.image_size, batch=args.attention_batch,
                        dtype="bfloat16")
  text = jax.jit(lambda v, x: prog.fn()(v, x)[0]).lower(prog.variables, prog.images).compile().as_text()
  targets = sorted({line.split('custom_call_target="')[1].split('"')[0]
                    for line in text.splitlines() if 'custom_call_target="' in line})
  rows.append(f"- dense bfloat16 program calls cuDNN fused attention: {any('fmha' in t for t in targets)}; "
              f"custom-call targets: {targets or 'none'}")
  return rows


def precision_rows(args) -> list[str]:
  f32 = programs.build("dense", variant=args.variant, image_size=args.image_size, batch=8, dtype="float32")
  bf16 = programs.build("dense", variant=args.variant, image_size=args.image_size, batch=8, dtype="bfloat16",
                        images=f32.images)
  a = np.asarray(f32.fn()(f32.variables, f32.images)[0], np.float32)
  b = np.asarray(bf16.fn()(bf16.variables, bf16.images)[0], np.float32)
  rel = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))
  agree = float((a.argmax(-1) == b.argmax(-1)).mean())
  return [f"- dense logits, bfloat16 vs float32: max relative error {rel:.3g}, argmax agreement {agree:.2f}"]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="B/16")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--programs", default=",".join(programs.names))
  ap.add_argument("--attention_batch", type=int, default=64)
  ap.add_argument("--out", default="", help="also write the Markdown here")
  args = ap.parse_args(argv)
  lines = [f"# Backend checks: ViT-{args.variant} at {args.image_size} px", "",
           f"- device: {measure.device_description()}", f"- {versions()}", ""]
  print("\n".join(lines), flush=True)

  def save():  # after every part: a run cut short by its time limit still leaves what it measured
    if args.out:
      with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")

  # The cheap checks first (two programs each); the GMACs rows lower every method twice.
  for part in (attention_rows, precision_rows):
    try:
      lines += part(args)
    except Exception as e:  # noqa: BLE001
      lines.append(f"- {part.__name__}: error {type(e).__name__}: {str(e)[:300]}")
    print(lines[-1], flush=True)
    save()
  lines.append("")
  gmacs_rows(args, lines, save)
  text = "\n".join(lines)
  print(text)
  return text


if __name__ == "__main__":
  main()
