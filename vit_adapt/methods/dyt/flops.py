"""DyT's per-image multiply-adds, counted the way the DyT paper counts its GFLOPs (fvcore convention).

One multiply-add = one FLOP; Linear (the routers and MoE gates included, as in the official count), matmul, conv
and LayerNorm (5 per element) are counted; softmax, GELU and element-wise ops are not: the library's one convention
(`vit_adapt.efficiency.measure`), so this formula equals the program count of the `capacity` path exactly
(tests/test_gmacs_convention.py). Attention matmuls (QK^T and AV) ARE counted: the paper-era numbers include
them (fvcore on torch >= 2 with fused attention silently drops them, about 0.7 G on ViT-B/16).

Per image: base + sum over blocks of block(t), with t the number of tokens the dispatched part processes in that
block (active patch tokens + the class token). ViT-B/16 at 224 with C = 100 classes: dense 17.582 G; DyT r = 16 with
98 of 196 patch tokens active in every layer 12.088 G (of which the routers 0.0018 G). Bucket padding of the `threshold` inference path (at most
1/64 of the rows) is real compute but, as in the paper, is not part of the per-image figure; `capacity` inference
computes exactly what it is charged.
"""

from __future__ import annotations

_LN = 5  # fvcore: LayerNorm = 5 flops per element


def base_macs(*, width: int, patch_size: int, num_patches: int, num_classes: int) -> int:
  """Patch embedding + final LayerNorm (all tokens) + linear head."""
  d, n = width, num_patches + 1
  return num_patches * d * 3 * patch_size ** 2 + _LN * d * n + d * num_classes


def block_macs(t, *, dispatch: str, width: int, mlp_dim: int, num_tokens: int, bottleneck: int,
               attention_keys: str = "selected", num_experts: int = 1, router: bool = True):
  """Multiply-adds of one DyT block when `t` tokens (array or int, class token included) are dispatched.

  Adapters run on every token in every variant; `t = num_tokens` gives the dense block plus its adapter.
  `attention_keys` ('selected' | 'all') of the attention variants: whether the skipped tokens stay keys/values.
  `router`: the block's token router (D -> 1 on every patch token); False for a plain ViT block.
  """
  d, n = width, num_tokens
  if not isinstance(t, int):
    # Traced counts: Python floats, since JAX refuses a Python int constant beyond int32 (ViT-B/16 at 512 px
    # has 4.1 G of attention per block) while a float constant becomes the array's float32.
    d, n = float(width), float(num_tokens)
  adapter = n * 2 * d * bottleneck + ((n - 1) * d if router else 0)
  if num_experts > 1:  # the gate on the mean token, then the experts' weights and biases mixed per image
    adapter += num_experts * (d + 2 * d * bottleneck + bottleneck + d)
  mlp = lambda k: k * (_LN * d + 2 * d * mlp_dim)                    # LN2 + fc1 + fc2
  attn_full = n * (_LN * d + 4 * d * d) + 2 * n * n * d               # LN1, qkv, proj, QK^T and AV
  # Queries of t tokens against keys/values of all n: LN1 + k,v for all, q + proj for t, QK^T + AV t x n.
  attn_queries = lambda k: n * (_LN * d + 2 * d * d) + k * 2 * d * d + 2 * k * n * d
  attn_subset = lambda k: k * (_LN * d + 4 * d * d) + 2 * k * k * d   # t tokens among themselves
  if dispatch in ("attention", "attention_mlp") and attention_keys == "selected":
    attn_queries = attn_subset
  if dispatch == "mlp":
    return attn_full + adapter + mlp(t)
  if dispatch == "attention":
    return attn_queries(t) + adapter + mlp(n)
  if dispatch == "attention_mlp":
    return attn_queries(t) + adapter + mlp(t)
  if dispatch == "layer":
    return attn_subset(t) + adapter + mlp(t)
  raise ValueError(f"unknown dispatch {dispatch!r}")


def dense_vit_macs(*, width: int, depth: int, mlp_dim: int, patch_size: int, num_patches: int,
                   num_classes: int) -> int:
  """The plain ViT (no adapter), for comparison: ViT-B/16, 100 classes -> 17.582 G."""
  n = num_patches + 1
  per_block = block_macs(n, dispatch="mlp", width=width, mlp_dim=mlp_dim, num_tokens=n, bottleneck=0,
                         router=False)
  return base_macs(width=width, patch_size=patch_size, num_patches=num_patches,
                   num_classes=num_classes) + depth * per_block
