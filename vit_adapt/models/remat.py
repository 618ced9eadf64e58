"""Per-block rematerialisation (`config.model.remat`): the backward pass recomputes what a block's forward did not
keep, trading compute for activation memory.

  ''      off: every intermediate the backward pass needs is kept (fastest, most memory)
  'dots'  keep the outputs of matmuls without batch dimensions (the projections and MLP layers) and recompute
          the rest (attention scores and probabilities, GELU, LayerNorm, dropout masks): ~1/3 more forward
          compute in the backward pass, much less memory (`jax.checkpoint_policies.dots_with_no_batch_dims_saveable`)
  'full'  keep only each block's inputs: one more forward pass in the backward pass, the least memory
          (`jax.checkpoint_policies.nothing_saveable`)

`remat_block(block_cls, policy)` is the block class with its entry points (`block_cls.remat_methods`: the
methods the encoder calls, `__call__` unless a method's block says otherwise) rematerialised. Parameter names,
values and gradients are those of `block_cls`; only what the compiled training step keeps in memory changes.

Why not plain `nn.remat`: `jax.checkpoint` keeps the recomputation apart from the forward pass only with
optimisation barriers, and XLA's CPU pipeline strips those early (`cse_barrier_expander`) and then runs CSE again:
the recomputation merges back into the forward pass, or is scheduled there, and every block's intermediates stay
alive as without remat (a stack of dense layers: the same temporary bytes with and without `jax.checkpoint`). Each
block's backward here reads its saved values through a data dependence on the block's incoming cotangents
(`+ 0 * cotangent`), which no compiler pass removes: the recomputation cannot run before the later blocks'
backward passes, nor be merged with the forward pass, on any backend. (A non-finite cotangent makes the block's
gradients NaN, where they would be non-finite anyway.)
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import lift

from vit_adapt.errors import UserError

POLICIES = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def check_policy(policy: str) -> None:
  if policy and policy not in POLICIES:
    raise UserError(f"config.model.remat={policy!r} is not a rematerialisation policy: use '' (off) or one of "
                    f"{', '.join(repr(p) for p in POLICIES)}.")


def _anchor(cotangents):
  """A float32 zero that depends on every floating-point cotangent (one element of each, times 0). XLA does not
  fold `x * 0` for floats (NaN/inf semantics), so the dependence survives every pass."""
  zero = jnp.zeros((), jnp.float32)
  for ct in jax.tree.leaves(cotangents):
    if jnp.issubdtype(ct.dtype, jnp.inexact) and ct.size:
      zero = zero + 0.0 * ct.reshape(-1)[0].astype(jnp.float32)
  return zero


def tied_checkpoint(fn, policy, untied_argnums=()):
  """`jax.checkpoint(fn, policy=policy)` whose backward pass reads the saved values (inputs and what `policy`
  keeps) through a data dependence on the cotangents (see the module doc). Values and gradients are those of
  `fn` (a value plus 0.0 is the value). Saved values that are leaves of the arguments `untied_argnums` (the
  parameters: no recomputation starts from them alone) are read as they are, saving the copies."""
  checkpointed = jax.checkpoint(fn, policy=policy)
  tied = []  # per saved value: whether the backward pass ties it (structure only: set when `forward` is traced)

  @jax.custom_vjp
  def call(*args):
    return fn(*args)

  def forward(*args):
    out, vjp_fn = jax.vjp(checkpointed, *args)  # the backward function: a pytree of the saved values
    untied = {id(x) for i in untied_argnums for x in jax.tree.leaves(args[i])}
    tied[:] = [id(r) not in untied and jnp.issubdtype(r.dtype, jnp.inexact) for r in jax.tree.leaves(vjp_fn)]
    return out, vjp_fn

  def backward(vjp_fn, cotangents):
    anchor = _anchor(cotangents)
    leaves, treedef = jax.tree.flatten(vjp_fn)
    leaves = [r + anchor.astype(r.dtype) if t else r for r, t in zip(leaves, tied)]
    return jax.tree.unflatten(treedef, leaves)(cotangents)

  call.defvjp(forward, backward)
  return call


def _lifted_checkpoint(fn, policy, variables=True, rngs=True):
  """`flax.core.lift.checkpoint` with `tied_checkpoint` in place of `jax.checkpoint`."""

  def inner(scope_fn, repack_fn, variable_groups, rng_groups, *args):
    def pure(variable_groups, rng_groups, *args):
      scope = scope_fn(variable_groups, rng_groups)
      y = fn(scope, *args)
      return y, repack_fn(scope)

    return tied_checkpoint(pure, policy, untied_argnums=(0,))(variable_groups, rng_groups, *args)

  return lift.pack(inner, (variables,), (variables,), (rngs,), name="remat")


def _rematted(fn, policy):
  """`fn` (a block method) rematerialised (`tied_checkpoint`, lifted to Linen as `nn.remat` lifts
  `jax.checkpoint`). jax.checkpoint traces every argument it is given, while blocks take
  Python switches (`deterministic`, DyT's `complete`) as keywords: array leaves of the arguments go through the
  checkpoint, every other leaf is closed over as the constant it is."""

  @functools.wraps(fn)
  def call(self, *args, **kwargs):
    leaves, treedef = jax.tree.flatten((args, kwargs))
    is_array = [isinstance(x, (jax.Array, np.ndarray)) for x in leaves]

    def inner(module, *arrays):
      it = iter(arrays)
      a, kw = jax.tree.unflatten(treedef, [next(it) if arr else x for arr, x in zip(is_array, leaves)])
      return fn(module, *a, **kw)

    arrays = [x for arr, x in zip(is_array, leaves) if arr]
    return nn.transforms.lift_transform(_lifted_checkpoint, inner, policy=policy)(self, *arrays)

  return call


@functools.lru_cache(maxsize=None)
def remat_block(block_cls, policy: str):
  """`block_cls` with its `remat_methods` rematerialised under `policy` (a key of POLICIES; '' = `block_cls`).
  Cached: equal configs build equal (same-class) models."""
  check_policy(policy)
  if not policy:
    return block_cls
  methods = getattr(block_cls, "remat_methods", ("__call__",))
  namespace = {name: _rematted(getattr(block_cls, name), POLICIES[policy]) for name in methods}
  namespace.update(__module__=block_cls.__module__, __qualname__=f"Remat{block_cls.__qualname__}")
  return type(f"Remat{block_cls.__name__}", (block_cls,), namespace)
