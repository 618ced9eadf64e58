"""LoRA (Hu et al., 2022) on the attention projections.

q = W_q x + (alpha/r) x A_q B_q (likewise for the other targets); B = 0 at start. Default targets query and
value, rank 8, alpha 8. Trainable: LoRA factors + head; parameters = depth * |targets| * r * 2D + head.
"""

import dataclasses

import ml_collections

from vit_adapt.errors import UserError
from vit_adapt.methods import base
from vit_adapt.models import vit
from vit_adapt.models.adapters import LoRA

_TARGETS = ("q", "k", "v", "o")


class LoRABlock(vit.Encoder1DBlock):
  rank: int = 8
  alpha: float = 8.0
  targets: str = "qv"

  def setup(self):
    super().setup()
    heads = (self.num_heads, self.width // self.num_heads)
    self.lora = {t: LoRA(self.rank, heads if t != "o" else (self.width,), alpha=self.alpha, dtype=self.dtype)
                 for t in self.targets}

  def attention_branch(self, x, deterministic: bool = True, mask=None, return_probs: bool = False):
    h = self.LayerNorm_0(x)
    q, k, v = self.attn.qkv(h)
    if "q" in self.lora:
      q = q + self.lora["q"](h)
    if "k" in self.lora:
      k = k + self.lora["k"](h)
    if "v" in self.lora:
      v = v + self.lora["v"](h)
    o, probs = self.attn.attend(q, k, v, mask, return_probs)
    y = self.attn.project_out(o)
    if "o" in self.lora:
      y = y + self.lora["o"](o.reshape(o.shape[:-2] + (-1,)))
    y = self.attn_drop(y, deterministic=deterministic)
    return (y, probs) if return_probs else y


@dataclasses.dataclass(frozen=True)
class LoRASettings(vit.EncoderSettings):
  """The fields of every `LoRABlock`."""
  rank: int
  alpha: float
  targets: str


def defaults():
  return ml_collections.ConfigDict({"name": "lora", "rank": 8, "alpha": 8.0, "targets": "qv"})


def model_kwargs(c, backbone):
  if not c.targets or any(t not in _TARGETS for t in c.targets) or len(set(c.targets)) != len(c.targets):
    raise UserError(f"config.method.targets={c.targets!r}: use a subset of the letters {''.join(_TARGETS)} "
                    "(query, key, value, output projection), e.g. 'qv'.")
  return dict(block_cls=LoRABlock, settings=LoRASettings(rank=c.rank, alpha=base.as_number(c.alpha), targets=c.targets))


LORA = base.register(base.Method(
    name="lora", model_cls=vit.VisionTransformer, trainable=(r"/lora_", r"^head/"), defaults=defaults,
    model_kwargs=model_kwargs, traced_fields=("alpha",), doc=__doc__))
