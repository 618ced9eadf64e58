"""Compute precision: `config.model.dtype='auto'` (the default) is bfloat16 on GPU/TPU and float32 on CPU; the
parameters stay float32 whatever the compute dtype."""

import jax
import jax.numpy as jnp
import pytest

from vit_adapt import config_lib, methods
from vit_adapt.errors import UserError
from vit_adapt.models import vit


@pytest.mark.parametrize("name, backend, expected", [
    ("auto", "cpu", "float32"), ("auto", "gpu", "bfloat16"), ("auto", "cuda", "bfloat16"),
    ("auto", "tpu", "bfloat16"), ("auto", "TPU", "bfloat16"), ("auto", "rocm", "bfloat16"),
    ("float32", "tpu", "float32"), ("bfloat16", "cpu", "bfloat16")])
def test_resolve_dtype(name, backend, expected):
  assert vit.resolve_dtype(name, backend) == expected


def test_auto_is_the_default_and_float32_on_this_cpu():
  config = config_lib.base_config("adapter")
  assert config.model.dtype == "auto"
  assert vit.resolve_dtype("auto") == ("float32" if jax.default_backend() == "cpu" else "bfloat16")


def test_unknown_dtype_names_the_key_and_the_choices():
  with pytest.raises(UserError, match=r"config.model.dtype='float16'.*'auto'"):
    vit.resolve_dtype("float16", "gpu")


def test_bfloat16_compute_keeps_float32_parameters(tiny_config):
  config = tiny_config("adapter", model=dict(dtype="bfloat16"))
  model, method = methods.build_model(config)
  assert model.dtype == jnp.bfloat16
  variables = methods.init_variables(model, method, config)
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
  logits, _ = model.apply(variables, jnp.zeros((2, 32, 32, 3)))
  assert logits.dtype == jnp.float32


def test_fused_attention_equals_the_explicit_path_in_float32():
  attn = vit.Attention(num_heads=3, width=48)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 17, 48))
  params = attn.init(jax.random.PRNGKey(1), x)
  fused, none = attn.apply(params, *attn.apply(params, x, method="qkv"), method="attend")
  explicit, probs = attn.apply(params, *attn.apply(params, x, method="qkv"), method="explicit_attention")
  assert none is None and probs.shape == (2, 3, 17, 17)
  assert jnp.abs(fused - explicit).max() < 1e-5
  # Asking for the probabilities, or passing a mask, takes the explicit path.
  out, p = attn.apply(params, *attn.apply(params, x, method="qkv"), return_probs=True, method="attend")
  assert jnp.array_equal(out, explicit) and jnp.array_equal(p, probs)


@pytest.mark.parametrize("b,nq,nk,heads", [(2, 17, 17, 3), (3, 5, 11, 2), (1, 40, 40, 4)])
def test_cpu_attention_in_groups_equals_the_ungrouped_op(b, nq, nk, heads, monkeypatch):
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (b, n, heads, 8)) for i, n in enumerate((nq, nk, nk)))
  reference = jax.nn.dot_product_attention(q, k, v, implementation="xla")
  pairs, logits = b * heads, nq * nk * 4
  groups_seen = []
  real_map = jax.lax.map

  def counting_map(f, xs):
    groups_seen.append(jax.tree.leaves(xs)[0].shape[:2])
    return real_map(f, xs)

  monkeypatch.setattr(jax.lax, "map", counting_map)
  for budget, groups in ((pairs * logits, None), (logits, pairs), (2 * logits, None), (1, pairs)):
    groups_seen.clear()
    out = jax.jit(lambda q, k, v: vit.cpu_attention(q, k, v, budget))(q, k, v)
    assert out.shape == reference.shape
    assert jnp.abs(out - reference).max() < 1e-6, budget  # each (image, head) pair's softmax is its own
    if budget >= pairs * logits:
      assert groups_seen == []  # everything fits: one group, no loop
    else:
      (count, size), = groups_seen
      assert count * size == pairs and size * logits <= max(budget, logits)
      assert groups is None or count == groups
  # The model's attention takes this path on the CPU, and `xla_attention` (the GMACs count) keeps the plain op.
  groups_seen.clear()
  jax.jit(lambda q, k, v: vit.fused_attention(q, k, v)).lower(q, k, v)
  with vit.xla_attention():
    monkeypatch.setattr(vit, "CPU_ATTENTION_GROUP_BYTES", 1)
    jax.jit(lambda q, k, v: vit.fused_attention(q, k, v)).lower(q, k, v)
  assert groups_seen == []


def test_grouped_cpu_attention_has_the_gradients_of_the_plain_op():
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 9, 3, 8)) for i in range(3))
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))  # noqa: E731
  plain = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")),
                   argnums=(0, 1, 2))(q, k, v)
  grouped = jax.grad(loss(lambda q, k, v: vit.cpu_attention(q, k, v, 9 * 9 * 4)), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(plain, grouped):
    assert jnp.abs(a - b).max() < 1e-6


def test_a_whole_model_and_its_gmacs_are_unchanged_by_the_fused_path(tiny_config, monkeypatch):
  from vit_adapt.efficiency import measure
  config = tiny_config("lora")
  model, method = methods.build_model(config)
  variables = methods.init_variables(model, method, config)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 32, 3))
  fn = lambda v, im: model.apply(v, im)[0]
  fused, macs = fn(variables, x), measure.lowered_macs(fn, variables, x)
  monkeypatch.setattr(vit.Attention, "attend",
                      lambda self, q, k, v, mask=None, return_probs=False: self.explicit_attention(q, k, v, mask))
  assert jnp.abs(fn(variables, x) - fused).max() < 1e-5
  assert measure.lowered_macs(fn, variables, x) == macs
