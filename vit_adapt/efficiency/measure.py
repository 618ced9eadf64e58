"""Measurements every method shares: GMACs of the program, memory of the compiled one, timed throughput.

GMACs, ONE convention for every method: fvcore's, the one the papers' "GFLOPs" use (fvcore/nn/jit_handles.py):
one multiply-add = one FLOP for matmuls (attention's QK^T and AV included), Linear layers (heads, routers, gates)
and convolutions, plus 5 flops per input element of every (affine) LayerNorm (`norm_flop_counter`); softmax, GELU,
poolings by mean and element-wise ops count nothing. Dense ViT-B/16 at 224 px: 17.58 (17.56 of dot/conv + 0.02
of LayerNorm). Formulas that some methods use for input-dependent compute (DyT's `dyt_flops`) follow the same
convention and are tested equal to the program count (tests/test_gmacs_convention.py). Not counted: the inference
BatchNorm of Sparse-Tuning's head (fvcore: 1 per element, 768 flops).

How: the multiply-adds of every `dot` and `convolution` instruction, and the LayerNorms (`hlo_macs`), of the
program as JAX lowers it, BEFORE backend optimisation (`lowered_macs`: `jax.jit(fn).lower(...).as_text(
dialect="hlo")`). That module is the same on CPU, GPU and TPU, so a config has one figure everywhere; the optimised module is not: on GPU XLA rewrites matmuls and
convolutions into cuBLAS/cuDNN `custom-call`s (`__cublas$gemm`, `__cudnn$convForward`), which are not dot
instructions. The backend-optimised module is therefore never counted: `hlo_macs` raises on a module with such
library calls (tests/data/gpu_optimised.hlo) rather than return a figure that misses them. What XLA would
remove before running is not counted either, so the dot/conv figure equals the count of the optimised CPU program:
instructions the result does not depend on (dead code), and repeated computations (CSE: an instruction equal to an
earlier one, called computations compared by contents). Attention is traced on XLA's path for the count
(`vit.xla_attention`; on GPU the model runs cuDNN's fused attention, a custom-call with the same matmuls). A computation counts once per `call` site, a while body
once, and every branch of a conditional once: programs with data-dependent compute (`lax.switch` over capacities)
count each branch they contain, so methods that branch account per branch (see their `gmacs` functions).

We do not use XLA's `cost_analysis()['flops'] / 2` directly because it also counts the ~40 flops per element of
the exact-erf GELU polynomial (+0.2 G on ViT-B/16: 17.83 instead of 17.6) and depends on the backend; it stays
available as `compiled_flops` (XLA's all-ops figure). Throughput: compile ahead of time, warm up, then the median
of repeated timed calls with `block_until_ready`. Memory: `compiled.memory_analysis()` (arguments + outputs +
temporaries).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

from vit_adapt.models import vit


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX returned one dict per computation
    cost = cost[0] if cost else {}
  return cost or {}


# One instruction: `[ROOT] [%]name = type opcode(operands), attributes`, the type an array (`f32[4,8]{1,0}`) or
# a tuple (`(f32[1,8]{1,0}, s32[1,8]{1,0})`). Names carry `%` in compiled modules and not in lowered ones;
# operands may be written with their types (`f32[4,8]{1,0} %a`).
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w-]+)\((.*)$")
_ARRAY = re.compile(r"^\w+\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\)\s*->\s*.*)?\{\s*$")
# Attributes naming the computations an instruction runs: calls (per call site), while bodies/conditions (once,
# like the optimised count), conditional branches (each once), reductions' and fusions' computations.
_CALLEES = re.compile(r"\b(?:to_apply|calls|body|condition|true_computation|false_computation)=%?([\w.\-]+)"
                      r"|\bbranch_computations=\{([^}]*)\}")
_METADATA = re.compile(r",?\s*metadata=\{[^}]*\}")
# Backend library calls that hide multiply-adds from this count (XLA's GPU and CPU rewrites of dot/convolution).
_LIBRARY_CALL = re.compile(r'custom_call_target="(__cublas[^"]*|__cudnn[^"]*|__onednn[^"]*|__triton[^"]*)"')


def _dims(s: str) -> list[int]:
  return [int(d) for d in s.split(",") if d]


def _split_operands(rest: str) -> tuple[list[str], str]:
  """`operands), attributes` (the text after an opcode's parenthesis) -> (operand names, attributes)."""
  depth, end = 0, len(rest)
  for i, ch in enumerate(rest):  # operands may carry shapes/layouts with nested brackets
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      if depth == 0:
        end = i
        break
      depth -= 1
  operands = re.sub(r"/\*.*?\*/", "", rest[:end])  # long lists carry `/*index=5*/` markers
  names = [o.split()[-1].lstrip("%") for o in re.split(r",\s*(?![^\[{]*[\]}])", operands) if o.strip()]
  return names, _METADATA.sub("", rest[end + 1:])


def _instruction_macs(dims: list[int], op: str, operands: list[str], rest: str, shapes: dict[str, list[int]]) -> int:
  if op not in ("dot", "convolution"):
    return 0
  out = int(np.prod(dims)) if dims else 1
  if op == "dot":
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    lhs = shapes.get(operands[0], [])
    return out * (int(np.prod([lhs[i] for i in _dims(contracting.group(1))])) if contracting else 1)
  kernel = shapes.get(operands[1], [])
  labels = re.search(r"dim_labels=\w+_(\w+)->", rest).group(1)
  # Kernel = spatial x (in / groups) x out, so kernel elements per output = MACs per output element.
  return out * (int(np.prod(kernel)) // kernel[labels.index("o")])


@dataclasses.dataclass
class _Instruction:
  macs: int
  operands: list[str]
  callees: list[str]
  op: str = ""
  role: str = ""  # its part in a LayerNorm, see `_layer_norm_role`
  norm_flops: int = 0  # fvcore's charge for a whole LayerNorm, on its 'applied' instruction


# fvcore's `norm_flop_counter`: an affine LayerNorm costs 5 per input element (4 without scale/shift; every
# LayerNorm of this library is affine).
LAYER_NORM_FLOPS_PER_ELEMENT = 5
# What lies between a normalisation's statistics (`reduce`s of its input) and its use: mean, E[x^2] - mean^2,
# clipping at 0, + epsilon, casts and reshapes.
_STATISTICS_OPS = frozenset({"add", "subtract", "multiply", "divide", "maximum", "reshape", "broadcast", "convert",
                             "constant", "bitcast", "copy"})
_RESHAPING_OPS = frozenset({"reshape", "broadcast", "convert", "bitcast", "copy"})


def _from_statistics(name: str, instructions: dict[str, _Instruction]) -> bool:
  """Whether `name` is computed only from `reduce`s (and constants): a normalisation's mean or variance."""
  found, todo, seen = False, [name], set()
  while todo:
    n = todo.pop()
    if n in seen or n not in instructions:
      continue
    seen.add(n)
    ins = instructions[n]
    if ins.op == "reduce":
      found = True
    elif ins.op in _STATISTICS_OPS:
      todo += ins.operands
    else:
      return False
  return found


def _layer_norm_role(op: str, operands: list[str], instructions: dict[str, _Instruction]) -> str:
  """'scale': 1/sqrt(var + eps) of reduced statistics, possibly times the LayerNorm's scale; 'centered': x - mean;
  'applied': centered x scale, the normalisation of one LayerNorm (counted there, once per LayerNorm: two norms of
  the same input share their statistics after CSE but not this product)."""
  roles = [instructions[o].role if o in instructions else "" for o in operands]
  if op == "rsqrt":
    return "scale" if _from_statistics(operands[0], instructions) else ""
  if op == "subtract" and len(operands) == 2 and _from_statistics(operands[1], instructions):
    return "centered"
  if op in _RESHAPING_OPS and roles and roles[0] in ("scale", "centered"):
    return roles[0]
  if op == "multiply" and sorted(roles) == ["centered", "scale"]:
    return "applied"
  if op == "multiply" and "scale" in roles and "centered" not in roles:
    return "scale"  # the LayerNorm's own scale parameter folded into 1/sqrt(var + eps)
  return ""


def _callee_names(attributes: str) -> list[str]:
  names = []
  for single, several in _CALLEES.findall(attributes):
    names += [single] if single else [c.strip().lstrip("%") for c in several.split(",") if c.strip()]
  return names


def _parse(hlo_text: str) -> tuple[str, dict[str, dict[str, _Instruction]], dict[str, str]]:
  """-> (entry name, {computation: {instruction: _Instruction}}, {computation: its ROOT instruction}).

  Common subexpressions are merged as XLA's CSE pass does: an instruction with the same type, opcode, operands
  and attributes as an earlier one of its computation is that instruction, computations it calls compared by
  their contents (the lowered module may compute a value twice, e.g. a method that recomputes a block's keys,
  each reduction with its own copy of `add`; XLA computes it once).
  """
  computations: dict[str, dict[str, _Instruction]] = {}
  roots: dict[str, str] = {}
  same_as: dict[str, str] = {}  # computation -> the first computation with the same contents
  by_contents: dict[tuple, str] = {}
  entry, current, body, position = None, None, [], {}

  def canonical_callee(m: re.Match) -> str:
    return re.sub(r"[\w.\-]+", lambda n: same_as.get(n.group(0), n.group(0)), m.group(0).split("=", 1)[1])

  def finish():
    if current is not None:
      contents = (tuple(body), position.get(roots.get(current)))
      same_as[current] = by_contents.setdefault(contents, current)

  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and not line.startswith(" "):
      finish()
      current, shapes, alias, seen, body, position = header.group(1), {}, {}, {}, [], {}
      computations[current] = {}
      entry = current if line.startswith("ENTRY") else entry
      continue
    m = _INSTR.match(line)
    if current is None or not m:
      continue
    name, shape, op = m.group(1), m.group(2), m.group(3)
    operands, attributes = _split_operands(m.group(4))
    operands = [alias.get(o, o) for o in operands]
    key = (shape, op, tuple(operands), _CALLEES.sub(canonical_callee, attributes))
    if op != "parameter" and key in seen:
      alias[name] = seen[key]
    else:
      seen[key] = name
      position[name] = len(position)
      body.append((shape, op, tuple(position.get(o, o) for o in operands), key[3]))
      array = _ARRAY.match(shape)
      dims = _dims(array.group(1)) if array else []
      shapes[name] = dims
      role = _layer_norm_role(op, operands, computations[current])
      norm = LAYER_NORM_FLOPS_PER_ELEMENT * int(np.prod(dims)) if role == "applied" else 0
      computations[current][name] = _Instruction(_instruction_macs(dims, op, operands, attributes, shapes),
                                                 operands, _callee_names(attributes), op, role, norm)
    if line.lstrip().startswith("ROOT"):
      roots[current] = alias.get(name, name)
  finish()
  if entry is None:
    raise ValueError("not an HLO module: no ENTRY computation")
  return entry, computations, roots


def hlo_macs(hlo_text: str, *, layer_norm: bool = True) -> int:
  """GMACs-convention count (x 1e9) of what an HLO module's entry computation runs: the multiply-adds of its
  dot/convolution instructions, plus (`layer_norm`) 5 per element of every LayerNorm (fvcore's convention).

  LayerNorms are recognised on the LOWERED module: (x - mean) times rsqrt(var + eps) [times scale], mean and var
  computed by `reduce`s, counted on that product (one per LayerNorm, elements = its input's); in a
  backend-optimised module those pieces sit in different fusions, so compare such a module with `layer_norm=False`.
  A normalisation by stored statistics (an inference BatchNorm) is not a LayerNorm and is not counted.

  Counts what XLA keeps: only instructions the computation's result depends on (dead code, which the lowered
  module may still hold, does not count), and a computation once per live instruction that runs it (a `call` per
  call site, a while body once, every branch of a conditional once). Raises ValueError on a backend-optimised
  module whose dots became library calls (cuBLAS/cuDNN/oneDNN), which this count cannot see.
  """
  library = _LIBRARY_CALL.search(hlo_text)
  if library:
    raise ValueError(f"HLO module calls {library.group(1)}: it is backend-optimised and its matmuls are not dot "
                     "instructions; count the lowered module instead (lowered_macs).")
  entry, computations, roots = _parse(hlo_text)
  memo: dict[str, int] = {}

  def total(c: str) -> int:
    if c not in memo:
      instructions, live, todo = computations[c], set(), [roots[c]]
      while todo:  # instructions the ROOT depends on
        name = todo.pop()
        if name in instructions and name not in live:
          live.add(name)
          todo += instructions[name].operands
      memo[c] = sum(instructions[n].macs + (instructions[n].norm_flops if layer_norm else 0)
                    + sum(total(k) for k in instructions[n].callees) for n in live)
    return memo[c]
  return total(entry)


def lowered_hlo(fn: Callable, *args, **kwargs) -> str:
  """HLO text of `jax.jit(fn)(*args)` as lowered, before any backend optimisation (the same on every backend)."""
  # A fresh function (no trace cached from a run), traced with XLA's attention: on GPU the model would otherwise
  # emit cuDNN's fused attention, a custom-call that hides its matmuls.
  with vit.xla_attention():
    lowered = jax.jit(lambda *a, **k: fn(*a, **k)).lower(*args, **kwargs)
  try:
    return lowered.as_text(dialect="hlo")
  except (TypeError, ValueError):  # a JAX without the `dialect` argument
    return lowered.compiler_ir("hlo").as_hlo_text()


def lowered_macs(fn: Callable, *args, **kwargs) -> int:
  """Multiply-adds of `jax.jit(fn)(*args)`: the dots and convolutions of the program itself, counted on the
  lowered module so that CPU, GPU and TPU give the same number (see the module docstring)."""
  return hlo_macs(lowered_hlo(fn, *args, **kwargs))


def compiled_flops(fn: Callable, *args, **kwargs) -> float:
  """Flops of `jax.jit(fn)(*args)` as XLA compiles it (what actually runs, not a formula)."""
  return float(_cost(jax.jit(fn).lower(*args, **kwargs).compile()).get("flops", 0.0))


def lowered_gmacs(fn: Callable, *args, batch_size: int = 1, **kwargs) -> float:
  """Multiply-adds (dot + convolution) per example, in G."""
  return lowered_macs(fn, *args, **kwargs) / batch_size / 1e9


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
