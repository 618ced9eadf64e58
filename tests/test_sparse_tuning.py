"""Sparse-Tuning: token selection and fusion, Dense Adapters (paper and released), BatchNorm head, config checks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_adapt import methods
from vit_adapt.errors import UserError
from vit_adapt.methods import sparse_tuning as st
from vit_adapt.methods.sparse_tuning.adapters import TorchBatchNorm
from vit_adapt.models import vit


def _model(dense_adapter="paper", fuse=True, head="bn_linear", variant="mu/8", image_size=32, depth=5, **method):
  if depth and depth < 10 and "sparse_blocks" not in method:  # small test models: sparsify where groups allow
    method["sparse_blocks"] = (3,) if dense_adapter == "released" else (1, 3)
  c = st.defaults()
  c.update(dense_adapter=dense_adapter, fuse_token=fuse, head=head, **method)
  mc = ml_collections.ConfigDict(dict(variant=variant, image_size=image_size, depth=depth, width=0, mlp_dim=0,
                                      num_heads=0, head_init_std=0.01))
  kw = vit.backbone_kwargs(mc, 5)
  kw.update(st.model_kwargs(c, kw))
  return st.SparseTuningViT(**kw)


def _init(model, images):
  return dict(jax.jit(model.init)(jax.random.PRNGKey(0), images))


def _images(n=4, size=32, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, 3), minval=-1, maxval=1)


# ----------------------------------------------------------------------------------------------- selection

def test_fused_token_is_score_weighted_sum_of_dropped_tokens_and_kept_are_topk():
  rng = np.random.default_rng(0)
  b, n, d, k = 3, 11, 5, 6
  x = rng.standard_normal((b, n, d)).astype(np.float32)
  scores = rng.uniform(0, 1, (b, n - 1)).astype(np.float32)
  sel = st.select_tokens(jnp.asarray(scores), k, fuse=True)
  y = np.asarray(st.apply_selection(sel, jnp.asarray(x)))
  assert y.shape == (b, 1 + k + 1, d)
  for i in range(b):
    order = np.argsort(-scores[i])
    np.testing.assert_array_equal(np.asarray(sel.idx[i]), order[:k])  # top-k, descending score
    np.testing.assert_array_equal(y[i, 0], x[i, 0])  # class token first
    np.testing.assert_allclose(y[i, 1:1 + k], x[i, 1:][order[:k]])
    dropped = order[k:]
    want = (scores[i, dropped, None] * x[i, 1:][dropped]).sum(0)  # raw scores, not renormalised
    np.testing.assert_allclose(y[i, -1], want, rtol=1e-5, atol=1e-6)
  no_fuse = np.asarray(st.apply_selection(st.select_tokens(jnp.asarray(scores), k, fuse=False), jnp.asarray(x)))
  np.testing.assert_array_equal(no_fuse, y[:, :-1])


def test_fusion_weights_are_not_detached():
  # The loss differentiates through the fused token into the scores (the official code does not detach them).
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 4)), jnp.float32)
  scores = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (2, 8)), jnp.float32)
  g = jax.grad(lambda s: jnp.sum(st.apply_selection(st.select_tokens(s, 5, True), x) ** 2))(scores)
  sel = st.select_tokens(scores, 5, True)
  g = np.asarray(g)
  assert np.all(g[~np.asarray(sel.keep_mask)] != 0) and np.all(g[np.asarray(sel.keep_mask)] == 0)


def test_keep_count_matches_official_rounding():
  assert [st.keep_count(0.7, n) for n in (196, 139, 99)] == [138, 98, 70]
  assert st.keep_count(1.0, 196) is None
  assert st.keep_count(0.7, 3) is None  # ceil(2.1) = 3 = everything: the official code skips selection


def test_block_selects_by_its_own_class_token_attention():
  """Scores are the block's own attention probabilities (class row, mean over heads), on the post-attention stream."""
  blk = st.SparseTuningBlock(mlp_dim=64, num_heads=2, width=16, keep_rate=0.5, fuse_token=True)
  dense = st.SparseTuningBlock(mlp_dim=64, num_heads=2, width=16, keep_rate=1.0)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 13, 16))
  v = blk.init(jax.random.PRNGKey(1), x)
  y, sel = blk.apply(v, x, method=lambda m, x: m.attend_and_select(x))
  post, none = dense.apply(v, x, method=lambda m, x: m.attend_and_select(x))
  assert none is None
  _, probs = dense.apply(v, x, method=lambda m, x: m.attention_branch(x, return_probs=True))
  want_scores = np.asarray(probs)[:, :, 0, 1:].mean(axis=1)
  np.testing.assert_allclose(sel.scores, want_scores, rtol=1e-6)
  k = 6  # ceil(0.5 * 12)
  post = np.asarray(post)
  for i in range(3):
    order = np.argsort(-want_scores[i])
    assert set(np.asarray(sel.idx[i])) == set(order[:k])
    # (a block that keeps every token runs the fused attention op, the selecting one the explicit path: rounding)
    np.testing.assert_allclose(y[i, 1:1 + k], post[i, 1:][np.asarray(sel.idx[i])], rtol=1e-6, atol=1e-6)
    drop = order[k:]
    np.testing.assert_allclose(y[i, -1], (want_scores[i, drop, None] * post[i, 1:][drop]).sum(0), rtol=1e-5,
                               atol=1e-6)


# ----------------------------------------------------------------------------------------------- model

@pytest.mark.parametrize("fuse,counts", [(True, [197, 140, 100, 72]), (False, [197, 139, 98, 69])])
def test_token_counts_b16_224(fuse, counts):
  model = _model(fuse=fuse, variant="B/16", image_size=224, depth=0)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  v = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  _, out = jax.eval_shape(model.apply, v, x)
  got = [out[f"block_{i}"].shape[1] for i in range(12)]
  assert got == [counts[0]] * 3 + [counts[1]] * 3 + [counts[2]] * 3 + [counts[3]] * 3
  assert out["kept_idx_3"].shape == (1, counts[1] - 1 - fuse)
  assert out["patch_ids_9"].shape == (1, counts[3] - 1)


def test_released_adapter_parameter_counts_b16():
  model = _model("released", variant="B/16", image_size=224, depth=0)
  v = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  enc = v["params"]["Transformer"]
  assert vit.count_params(enc["encoderblock_0"]["adapter"]) == 109_536
  assert sum(vit.count_params(enc[f"encoderblock_{i}"]["adapter"]) for i in range(12)) == 1_314_432


def test_paper_adapter_reads_previous_outputs():
  model = _model("paper")
  v = _init(model, _images(1))
  enc = v["params"]["Transformer"]
  names = [sorted(enc[f"encoderblock_{i}"]["adapter"]) for i in range(5)]
  assert names[0] == ["down", "up"]
  assert names[1] == names[2] == ["down", "down_prev1", "up"]
  assert names[3] == names[4] == ["down", "down_prev1", "down_prev3", "up"]
  # Our documented init: up-projection zero (exact no-op), down-projections not.
  a = enc["encoderblock_4"]["adapter"]
  assert not np.any(a["up"]["kernel"]) and np.any(a["down_prev3"]["kernel"])


def test_released_init_quirk_every_adapter_linear_trunc_normal_002():
  model = _model("released", variant="Ti/16", image_size=32, depth=2, sparse_blocks=(1,))
  v = _init(model, _images(1))
  a = v["params"]["Transformer"]["encoderblock_1"]["adapter"]
  assert sorted(a) == ["down1", "down2", "down3", "up1", "up2"]
  for name in a:
    assert not np.any(a[name]["bias"])
  up = np.concatenate([np.ravel(a["up2"]["kernel"]), np.ravel(a["down1"]["kernel"])])
  assert abs(np.std(up) - 0.02) < 0.001  # non-zero from step 0 (the release's global init overwrites its zeros)


def _loss_fn(model, variables, images, labels):
  def loss(trainable, frozen):
    params = methods.merge_params(trainable, frozen)
    logits, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])[0]
    return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])
  return loss


@pytest.mark.parametrize("mode", ["paper", "released"])
def test_gradients_reach_every_adapter_parameter(mode):
  model = _model(mode, depth=6)  # released: groups (0, 1, 2) + e after block 2 and (3, 4, 5) after block 5
  images, labels = _images(6), jnp.arange(6) % 5
  variables = _init(model, images[:1])
  params = variables["params"]
  if mode == "paper":  # zero up-projections block every gradient but theirs at init: perturb them
    flat = methods.base.flatten(params)
    flat = {k: (0.1 * jax.random.normal(jax.random.PRNGKey(len(k)), v.shape) if k.endswith("up/kernel") else v)
            for k, v in flat.items()}
    params = methods.base.unflatten(flat)
  method = methods.get("sparse_tuning")
  trainable, frozen = methods.split_params(params, method.trainable)
  grads = jax.jit(jax.grad(_loss_fn(model, variables, images, labels)))(trainable, frozen)
  flat = methods.base.flatten(grads)
  adapters = [k for k in flat if "/adapter/" in k]
  # released: 5 linears x (kernel, bias) per block; paper: down + up (kernel, bias) + down_prev1 (blocks 1..5)
  # + down_prev3 (blocks 3..5)
  assert len(adapters) == (6 * 5 * 2 if mode == "released" else 6 * 4 + 5 + 3)
  dead = [k for k, g in flat.items() if not np.any(np.asarray(g))]
  assert not dead, dead
  assert set(flat) == set(adapters) | {"head/kernel", "head/bias"}


def test_released_group_sums_follow_the_official_schedule():
  """x += e + a0 + a1 + a2 after block 2, a3 + a4 + a5 after 5, a6 + a7 + a8 after 8, a9 + a10 after 11."""
  conn = st.CONNECTIONS["released"]
  e = jnp.asarray(1000.0)
  outputs = {j: jnp.asarray(2.0 ** j) for j in range(12)}
  added = {i: float(conn.after_block(i, jnp.asarray(0.0), e, outputs)) for i in range(12)}
  assert added == {0: 0, 1: 0, 2: 1000 + 1 + 2 + 4, 3: 0, 4: 0, 5: 8 + 16 + 32, 6: 0, 7: 0, 8: 64 + 128 + 256,
                   9: 0, 10: 0, 11: 512 + 1024}
  # Outputs are kept exactly as long as a later group needs them.
  assert conn.needed_after(0, 1, 12) and not conn.needed_after(2, 2, 12) and conn.needed_after(10, 10, 12)
  assert not conn.needed_after(11, 11, 12) and not conn.needed_after(3, 3, 5)
  paper = st.CONNECTIONS["paper"]
  assert [paper.prev_offsets(i) for i in range(5)] == [(), (1,), (1,), (1, 3), (1, 3)]
  assert paper.needed_after(5, 7, 12) and not paper.needed_after(5, 8, 12) and not paper.needed_after(10, 11, 12)


def test_config_errors():
  with pytest.raises(UserError, match="dense_adapter"):
    _model("bogus")
  with pytest.raises(UserError, match="inside that group"):
    _model("released", depth=12, sparse_blocks=(2, 6, 9))
  with pytest.raises(UserError, match="sparse_blocks"):
    _model("paper", depth=12, sparse_blocks=(3, 12))
  with pytest.raises(UserError, match="keep_rate"):
    _model("paper", keep_rate=0.0)
  with pytest.raises(UserError, match="head"):
    _model("paper", head="mlp")


# ----------------------------------------------------------------------------------------------- head

def test_batchnorm_head_matches_pytorch_semantics():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).standard_normal((3, 8, 6)).astype(np.float32) * 3 + 1
  bn_t = torch.nn.BatchNorm1d(6, affine=False, eps=1e-6, momentum=0.1)
  bn = TorchBatchNorm()
  stats = bn.init(jax.random.PRNGKey(0), x[0], train=False)
  for step in range(3):  # training: batch statistics, running stats updated with the unbiased variance
    bn_t.train()
    want = bn_t(torch.from_numpy(x[step])).detach().numpy()
    got, upd = bn.apply(stats, x[step], train=True, mutable=["batch_stats"])
    stats = upd
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats["batch_stats"]["mean"], bn_t.running_mean.numpy(), rtol=1e-6)
  np.testing.assert_allclose(stats["batch_stats"]["var"], bn_t.running_var.numpy(), rtol=1e-6)
  bn_t.eval()
  np.testing.assert_allclose(bn.apply(stats, x[0], train=False),
                             bn_t(torch.from_numpy(x[0])).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_linear_head_has_no_batch_stats_and_bn_head_updates_in_training():
  images = _images(4)
  lin = _model(head="linear", depth=4)
  assert "batch_stats" not in _init(lin, images[:1])
  bn = _model(head="bn_linear", depth=4)
  v = _init(bn, images[:1])
  (_, _), upd = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))(v, images)
  assert not np.allclose(upd["batch_stats"]["head_bn"]["mean"], v["batch_stats"]["head_bn"]["mean"])
  # Evaluation uses the running statistics: output independent of the other examples of the batch.
  evaluate = jax.jit(bn.apply)
  a, _ = evaluate({**v, **upd}, images)
  b, _ = evaluate({**v, **upd}, images[:1])
  np.testing.assert_allclose(a[:1], b, rtol=1e-5, atol=1e-6)
