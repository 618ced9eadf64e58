"""A minimal PyTorch VideoMAE ViT (the architecture of MCG-NJU/VideoMAE's `modeling_finetune.py`: Conv3d tubelet
embedding, fixed sinusoid table, blocks with a bias-free qkv plus q_bias / v_bias, no final norm, mean pooling,
fc_norm, head), written from the paper's description, to check the `tubelet` model and the VideoMAE loader
against an independent implementation with the release's parameter names."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sinusoid_table(n, d):
  table = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
  table[:, 0::2] = np.sin(table[:, 0::2])
  table[:, 1::2] = np.cos(table[:, 1::2])
  return torch.tensor(table, dtype=torch.float32)[None]


class Attention(nn.Module):
  def __init__(self, d, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(d, 3 * d, bias=False)
    self.q_bias = nn.Parameter(torch.zeros(d))
    self.v_bias = nn.Parameter(torch.zeros(d))
    self.proj = nn.Linear(d, d)

  def forward(self, x):
    b, n, d = x.shape
    bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
    qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)
    x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return self.proj(x)


class Block(nn.Module):
  def __init__(self, d, heads, mlp):
    super().__init__()
    self.norm1 = nn.LayerNorm(d, eps=1e-6)
    self.attn = Attention(d, heads)
    self.norm2 = nn.LayerNorm(d, eps=1e-6)
    self.mlp = nn.Sequential()
    self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp.fc2(self.mlp.act(self.mlp.fc1(self.norm2(x))))


class VideoMAE(nn.Module):
  def __init__(self, *, size, patch, frames, tubelet, width, depth, heads, mlp, classes):
    super().__init__()
    self.patch_embed = nn.Module()
    self.patch_embed.proj = nn.Conv3d(3, width, (tubelet, patch, patch), stride=(tubelet, patch, patch))
    n = (frames // tubelet) * (size // patch) ** 2
    self.pos_embed = sinusoid_table(n, width)  # a plain attribute: not in the state dict, as in VideoMAE
    self.blocks = nn.ModuleList([Block(width, heads, mlp) for _ in range(depth)])
    self.fc_norm = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, classes)

  def forward(self, x):  # (B, 3, T, H, W)
    x = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
    for blk in self.blocks:
      x = blk(x)
    return self.head(self.fc_norm(x.mean(1)))


def seeded(seed=0, **kw):
  torch.manual_seed(seed)
  model = VideoMAE(**kw)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.named_parameters():
      norm = "norm" in name and name.endswith("weight")
      t.copy_((1.0 if norm else 0.0) + torch.randn(t.shape, generator=gen) * (0.2 if norm else 0.1))
  return model.eval()


