"""Per-block rematerialisation (`config.model.remat`): the backward pass recomputes what a block's forward did not
keep, trading compute for activation memory.

  ''      off: every intermediate the backward pass needs is kept (fastest, most memory)
  'dots'  keep the outputs of matmuls without batch dimensions (the projections and MLP layers) and recompute
          the rest (attention scores and probabilities, GELU, LayerNorm, dropout masks): ~1/3 more forward
          compute in the backward pass, much less memory (`jax.checkpoint_policies.dots_with_no_batch_dims_saveable`)
  'full'  keep only each block's inputs: one more forward pass in the backward pass, the least memory
          (`jax.checkpoint_policies.nothing_saveable`)

`remat_block(block_cls, policy)` is the block class with its entry points (`block_cls.remat_methods`: the
methods the encoder calls, `__call__` unless a method's block says otherwise) under `nn.remat`. Parameter names,
values and gradients are those of `block_cls`; only what the compiled training step keeps in memory changes.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

from vit_adapt.errors import UserError

POLICIES = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def check_policy(policy: str) -> None:
  if policy and policy not in POLICIES:
    raise UserError(f"config.model.remat={policy!r} is not a rematerialisation policy: use '' (off) or one of "
                    f"{', '.join(repr(p) for p in POLICIES)}.")


def _rematted(fn, policy):
  """`fn` (a block method) under `nn.remat`. jax.checkpoint traces every argument it is given, while blocks take
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
    return nn.remat(inner, policy=policy)(self, *arrays)

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
