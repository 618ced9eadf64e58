"""Sparse-Tuning's budget knob: `keep_rate` (the fraction of patch tokens kept at each sparse block), the trained
model evaluated as is."""

from vit_adapt.methods import base


def apply(ctx: base.KnobContext, value: float):
  return base.with_method_fields(ctx.config, keep_rate=float(value)), ctx.variables


KNOB = base.Knob("keep_rate", lambda ctx: (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), apply)
