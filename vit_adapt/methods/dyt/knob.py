"""DyT's budget knob: `capacity_rate` with `inference='capacity'` (the fraction of patch tokens through each MLP),
the trained model evaluated as is."""

from vit_adapt.methods import base


def apply(ctx: base.KnobContext, value: float):
  return base.with_method_fields(ctx.config, inference="capacity", capacity_rate=float(value)), ctx.variables


KNOB = base.Knob("capacity_rate", lambda ctx: (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), apply)
