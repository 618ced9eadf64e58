"""Visual Prompt Tuning (Jia et al., 2022), shallow and deep.

Shallow: P learnable prompt tokens are inserted after the class token once, after the position embedding.
Deep: every block gets its own P prompts, replacing the previous block's prompt outputs. Prompts are initialised
uniform(+-sqrt(6 / (3 * patch^2 + D))) (VPT's Xavier choice) with dropout 0.1; pooling reads the class token.
Trainable: prompts + head; parameters = (1 or depth) * P * D + head.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_adapt.errors import UserError
from vit_adapt.methods import base
from vit_adapt.models import vit


@dataclasses.dataclass(frozen=True)
class VPTSettings(vit.EncoderSettings):
  """The prompts' settings; they are the encoder's own, the blocks are the backbone's."""
  num_prompts: int
  deep: bool
  prompt_dropout: float
  patch_size: int  # of the backbone: sets the prompts' init range

  def block_fields(self, i: int) -> dict:
    return {}


class VPTEncoder(vit.Encoder):
  """The encoder with prompt tokens; `settings` is a `VPTSettings`."""

  def setup(self):
    super().setup()
    s = self.settings
    bound = float(np.sqrt(6.0 / (3 * s.patch_size ** 2 + self.width)))
    init = lambda k, shape: nn.initializers.uniform(2 * bound)(k, shape) - bound
    n = self.depth if s.deep else 1
    self.prompts = self.param("vpt_prompts", init, (n, s.num_prompts, self.width))
    self.prompt_drop = nn.Dropout(s.prompt_dropout)

  def _prompts(self, i, batch, train):
    p = jnp.broadcast_to(self.prompts[i].astype(self.dtype), (batch,) + self.prompts.shape[1:])
    return self.prompt_drop(p, deterministic=not train)

  def __call__(self, x, train: bool = False):
    out = {}
    x = self.add_posemb(x)
    b, p = x.shape[0], self.settings.num_prompts
    x = jnp.concatenate([x[:, :1], self._prompts(0, b, train), x[:, 1:]], axis=1)
    for i, blk in enumerate(self.blocks):
      if self.settings.deep and i > 0:
        x = jnp.concatenate([x[:, :1], self._prompts(i, b, train), x[:, 1 + p:]], axis=1)
      x = blk(x, deterministic=not train)
      out[f"block_{i}"] = x
    x = self.encoder_norm(x)
    # Drop the prompt outputs so pooling ('tok' or 'gap') sees the usual token layout.
    return jnp.concatenate([x[:, :1], x[:, 1 + p:]], axis=1), out


def defaults():
  return ml_collections.ConfigDict({"name": "vpt", "num_prompts": 10, "deep": True, "dropout": 0.1})


def model_kwargs(c, backbone):
  if c.num_prompts < 1:
    raise UserError(f"config.method.num_prompts={c.num_prompts}: VPT needs at least one prompt.")
  return dict(encoder_cls=VPTEncoder, settings=VPTSettings(num_prompts=c.num_prompts, deep=bool(c.deep),
                                                           prompt_dropout=c.dropout,
                                                           patch_size=backbone["patch_size"]))


VPT = base.register(base.Method(
    name="vpt", model_cls=vit.VisionTransformer, trainable=(r"/vpt_prompts$", r"^head/"), defaults=defaults,
    model_kwargs=model_kwargs, doc=__doc__))
