"""AdaptFormer (Chen et al., 2022): a bottleneck adapter parallel to each block's MLP.

  x <- x + Attn(LN0(x));   x <- x + MLP(LN1(x)) + s * up(Dropout(ReLU(down(x))))

The adapter reads the un-normalised post-attention stream (AdaptFormer's VTAB setting, layernorm option
"none"), scale 0.1, bottleneck 64, dropout 0.1, up-projection zero-initialised. Trainable: adapters + head;
parameters = depth * (2 D r + r + D) + head.
"""

import dataclasses
from typing import Any

import ml_collections

from vit_adapt.methods import base
from vit_adapt.models import vit
from vit_adapt.models.adapters import Adapter


class AdapterBlock(vit.Encoder1DBlock):
  bottleneck: int = 64
  adapter_scale: float = 0.1
  adapter_dropout: float = 0.1

  def setup(self):
    super().setup()
    self.adapter = Adapter(self.bottleneck, self.width, scale=self.adapter_scale, dropout=self.adapter_dropout,
                           dtype=self.dtype)

  def __call__(self, x, deterministic: bool = True):
    x = self.residual(x, self.attention_branch(x, deterministic), deterministic)
    a = self.adapter(x, deterministic=deterministic)
    return self.residual(x, self.mlp_branch(x, deterministic), deterministic) + a


@dataclasses.dataclass(frozen=True)
class AdapterSettings(vit.EncoderSettings):
  """The fields of every `AdapterBlock`."""
  bottleneck: int
  adapter_scale: float
  adapter_dropout: float


def defaults():
  return ml_collections.ConfigDict({"name": "adapter", "bottleneck": 64, "scale": 0.1, "dropout": 0.1})


def model_kwargs(c, backbone) -> dict[str, Any]:
  return dict(block_cls=AdapterBlock,
              settings=AdapterSettings(bottleneck=c.bottleneck, adapter_scale=base.as_number(c.scale), adapter_dropout=c.dropout))


ADAPTER = base.register(base.Method(
    name="adapter", model_cls=vit.VisionTransformer, trainable=(r"/adapter/", r"^head/"), defaults=defaults,
    model_kwargs=model_kwargs, traced_fields=("scale",), doc=__doc__))
