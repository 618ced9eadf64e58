"""One GMACs convention for every method, fvcore's (the papers'): multiply-adds of matmuls (attention included),
convolutions and Linear layers (routers, gates and exit heads too), plus 5 per element of every LayerNorm
(fvcore's `norm_flop_counter` for an affine norm); softmax, GELU and element-wise ops are free.

The program count (`measure.lowered_macs`) recognises LayerNorms in the lowered module; here it is checked against
an independent count of the LayerNorms each method's inference pass applies (Flax's method interceptor), against
the closed formula of a ViT, and against DyT's per-image formula, which must be the same number.
"""

import jax
import jax.numpy as jnp
import flax.linen as nn
import pytest

from test_gmacs_program import CASES, _tiny
from vit_adapt import methods, tasks
from vit_adapt.efficiency import measure
from vit_adapt.efficiency import report as efficiency
from vit_adapt.methods.dyt import flops as dyt_flops
from vit_adapt.methods.sparse_tuning.adapters import TorchBatchNorm


def test_a_layer_norm_costs_five_per_element_in_any_dtype():
  for dtype in (jnp.float32, jnp.bfloat16):
    ln = nn.LayerNorm(epsilon=1e-6, dtype=dtype)
    x = jnp.ones((2, 5, 8), dtype)
    v = ln.init(jax.random.PRNGKey(0), x)
    assert measure.lowered_macs(ln.apply, v, x) == 5 * 2 * 5 * 8
    assert measure.lowered_macs(ln.apply, v, x[:, :3]) == 5 * 2 * 3 * 8
  # LayerNorm then a dense layer: both terms; `layer_norm=False` leaves the multiply-adds.
  dense = jnp.ones((8, 4))
  f = lambda v, x: ln.apply(v, x) @ dense
  x = jnp.ones((2, 5, 8))
  text = measure.lowered_hlo(f, v, x)
  assert measure.hlo_macs(text) == 5 * 80 + 80 * 4 and measure.hlo_macs(text, layer_norm=False) == 80 * 4


def test_a_normalisation_by_stored_statistics_is_not_a_layer_norm():
  # Sparse-Tuning's head BatchNorm at inference: rsqrt of the running variance, no statistics of the input.
  bn = TorchBatchNorm()
  x = jnp.ones((4, 8))
  v = bn.init(jax.random.PRNGKey(0), x, train=False)
  assert measure.lowered_macs(lambda v, x: bn.apply(v, x, train=False), v, x) == 0


def _everything(model):
  """The inference pass returning all it computes (MET's early-exit logits too), so that no LayerNorm is dead."""
  return lambda v, x: model.apply(v, x, train=False)


def _applied_layer_norm_elements(model, variables, inputs) -> int:
  """Elements normalised by the LayerNorms the inference pass calls, counted by intercepting the calls. The same
  LayerNorm applied twice to the same array (SynQT's frozen blocks) is one computation, as for XLA."""
  seen = {}

  def count(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.LayerNorm) and context.method_name == "__call__":
      seen[(context.module.scope.path, id(args[0]))] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(count):
    jax.eval_shape(_everything(model), variables, inputs)
  return sum(x.size for x in seen.values())


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_method_counts_its_layer_norms_the_fvcore_way(case):
  config = _tiny(CASES[case]())
  model, method = methods.build_model(config)
  variables = methods.abstract_variables(model, method, config)
  inputs = tasks.for_config(config).example_input(config, 1)
  text = measure.lowered_hlo(_everything(model), variables, inputs)
  norms = _applied_layer_norm_elements(model, variables, inputs)
  assert norms > 0
  layer_norm_flops = measure.hlo_macs(text) - measure.hlo_macs(text, layer_norm=False)
  if case == "dyt_threshold":
    # One branch of DyT's bucketed MLP (the smallest bucket) computes a result nothing reads: the lowered module
    # drops it, and the program count (dots included) counts what is kept, never dead code.
    assert 0 < norms * 5 - layer_norm_flops < norms * 5 // 50
  else:
    assert layer_norm_flops == 5 * norms


def test_dense_vit_program_equals_the_closed_formula():
  config = _tiny(CASES["linear"]())
  model, method = methods.build_model(config)
  variables = methods.abstract_variables(model, method, config)
  inputs = tasks.for_config(config).example_input(config, 1)
  got = measure.lowered_macs(efficiency.inference_fn(model), variables, inputs)
  s, p = config.model.image_size, model.patch_size
  want = dyt_flops.dense_vit_macs(width=model.width, depth=4, mlp_dim=model.mlp_dim, patch_size=p,
                                  num_patches=(s // p) ** 2, num_classes=model.num_classes)
  assert got == want


@pytest.mark.parametrize("fields", [dict(), dict(dispatch="layer"), dict(dispatch="attention_mlp"),
                                    dict(num_experts=3)])
def test_dyt_formula_equals_its_capacity_program_routers_included(fields):
  config = _tiny(CASES["dyt_capacity"]())
  config.method.update(capacity_rate=0.5, **fields)
  model, method = methods.build_model(config)
  variables = methods.abstract_variables(model, method, config)
  inputs = tasks.for_config(config).example_input(config, 1)
  program = measure.lowered_macs(efficiency.inference_fn(model), variables, inputs)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, inputs)[1]
  assert out["gmacs"].shape == (1,)
  # The formula with the capacity path's token count (k patch tokens + the class token in every block).
  n = model.num_patches + 1
  k = round(0.5 * model.num_patches) + 1
  s = model.settings
  per_block = dyt_flops.block_macs(k, dispatch=s.dispatch, width=model.width, mlp_dim=model.mlp_dim, num_tokens=n,
                                   bottleneck=s.bottleneck, attention_keys=s.attention_keys,
                                   num_experts=s.num_experts)
  base = dyt_flops.base_macs(width=model.width, patch_size=model.patch_size, num_patches=model.num_patches,
                             num_classes=model.num_classes)
  assert program == base + 4 * per_block
