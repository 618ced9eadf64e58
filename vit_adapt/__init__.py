"""vit_adapt: parameter-efficient ViT adaptation in JAX/Flax."""

# Before anything starts JAX's backends: the package's XLA CPU options (user XLA_FLAGS win; opt-out by env).
from vit_adapt import machine as _machine

_machine.apply_xla_cpu_defaults()
