"""Measurements every method shares: GMACs and memory from the compiled program, timed throughput.

GMACs (the unit the papers call GFLOPs, counted with fvcore: one multiply-add = one FLOP, matmuls and convs):
the multiply-adds of every `dot` and `convolution` instruction of the compiled (optimised) HLO module. We do
not use XLA's `cost_analysis()['flops'] / 2` directly because it also counts the ~40 flops per element of the
exact-erf GELU polynomial (+0.2 G on ViT-B/16: 17.83 instead of 17.6); it is still reported as
`xla_gmacs_all_ops`. Programs with data-dependent compute (`lax.switch` over capacities) count each branch they
contain, so methods that branch account per branch (see their `gmacs` functions). Throughput: compile ahead of time, warm up, then the median of repeated timed
calls with `block_until_ready`. Memory: `compiled.memory_analysis()` (arguments + outputs + temporaries).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX returned one dict per computation
    cost = cost[0] if cost else {}
  return cost or {}


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*\w+\[([\d,]*)\][^ ]*\s+(\w[\w-]*)\((.*)$")


def _dims(s: str) -> list[int]:
  return [int(d) for d in s.split(",") if d]


def hlo_macs(hlo_text: str) -> int:
  """Multiply-adds of all dot/convolution instructions in an HLO module's text."""
  shapes: dict[str, list[int]] = {}
  total = 0
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, dims, op, rest = m.group(1), _dims(m.group(2)), m.group(3), m.group(4)
    shapes[name] = dims
    if op not in ("dot", "convolution"):
      continue
    operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
    out = int(np.prod(dims)) if dims else 1
    if op == "dot":
      contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
      lhs = shapes.get(operands[0], [])
      k = int(np.prod([lhs[i] for i in _dims(contracting.group(1))])) if contracting else 1
      total += out * k
    else:
      kernel = shapes.get(operands[1], [])
      labels = re.search(r"dim_labels=\w+_(\w+)->", rest).group(1)
      # Kernel = spatial x (in / groups) x out, so kernel elements per output = MACs per output element.
      total += out * (int(np.prod(kernel)) // kernel[labels.index("o")])
  return total


def compiled_macs(fn: Callable, *args, **kwargs) -> int:
  """Multiply-adds of `jax.jit(fn)(*args)` as XLA compiles it (what actually runs, not a formula)."""
  return hlo_macs(jax.jit(fn).lower(*args, **kwargs).compile().as_text())


def compiled_flops(fn: Callable, *args, **kwargs) -> float:
  """Flops of `jax.jit(fn)(*args)` as XLA compiles it (what actually runs, not a formula)."""
  return float(_cost(jax.jit(fn).lower(*args, **kwargs).compile()).get("flops", 0.0))


def compiled_gmacs(fn: Callable, *args, batch_size: int = 1, **kwargs) -> float:
  """Multiply-adds (dot + convolution) per example, in G."""
  return compiled_macs(fn, *args, **kwargs) / batch_size / 1e9


@dataclasses.dataclass
class MemoryStats:
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  generated_code_bytes: int

  @property
  def peak_bytes(self) -> int:
    # Donated (aliased) buffers are counted once.
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes


def memory_stats(compiled) -> MemoryStats:
  """XLA's memory analysis of a compiled program, per device."""
  m = compiled.memory_analysis()
  return MemoryStats(int(m.argument_size_in_bytes), int(m.output_size_in_bytes), int(m.temp_size_in_bytes),
                     int(getattr(m, "alias_size_in_bytes", 0)), int(m.generated_code_size_in_bytes))


def compiled_memory(fn: Callable, *args, donate_argnums=(), **kwargs) -> MemoryStats:
  return memory_stats(jax.jit(fn, donate_argnums=donate_argnums).lower(*args, **kwargs).compile())


def throughput(fn: Callable, *args, batch_size: int, repeats: int = 5, warmup: int = 2,
               min_seconds: float = 0.0) -> dict[str, Any]:
  """Images/s of a jitted `fn(*args)`: ahead-of-time compile, warm-up, median over `repeats` timed calls."""
  compiled = jax.jit(fn).lower(*args).compile()
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  while len(times) < repeats or sum(times) < min_seconds:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return {"images_per_s": batch_size / med, "median_s": med, "repeats": len(times), "batch_size": batch_size}


def device_description() -> str:
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", d.platform)
  return f"{len(jax.devices())}x {kind} ({d.platform})"
