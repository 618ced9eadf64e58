r"""DyT (Dynamic Tuning) on a VTAB-1k task, or on a complete dataset with `complete`.

VTAB-1k recipe (the official code, identical for all 19 tasks): ViT-B/16 ImageNet-21k (original) backbone at 224
px, frozen; per block a token router (MLP dispatch, Gumbel-sigmoid tau 5, target activation rate r = 0.5) and a
bottleneck-16 adapter (scale 1.0, dropout 0.1); the head (timm's trunc_normal_ std 0.01, i.e. a plain normal)
trains too. Loss: CE + 2.0 x rate loss + the complete-model pass (CE + KL). AdamW lr 1e-3, weight decay 1e-4 (biases
and head included), batch 64 keeping the last partial batch (16 steps/epoch), 100 epochs, 10 epochs of per-step
linear warmup, cosine to 1e-5; train800val200 -> test, no augmentation, pixels in [-1, 1]. Reported: the
final-epoch test accuracy (the official script picks the best epoch on the test set; we do not).

  python -m vit_adapt.main --config=configs/dyt_vtab.py:task=vtab/dtd \
      --config.model.init=weights/ViT-B_16.npz --workdir=runs/dyt/dtd

It logs the parameter table, progress lines with the loss terms (ce, rate_loss, activation_rate, complete_ce,
distill_kl), and ends with one JSON line {"task": "vtab/dtd", "method": "dyt", "top1": ..., "trainable_params":
..., "gmacs_per_image": ..., "throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ...,
"activation_rate": ..., "gmacs": ...} (the last two: the method's evaluation statistics). `gmacs_per_image` is
the average per-image multiply-adds of the evaluated images at their actual activation, counted like the paper:
`python experiments/bench_dyt.py` counts 17.58 for the dense ViT-B/16 and 12.09 for DyT with half of the patch
tokens active (docs/dyt.md). Full numbers in WORKDIR/results.json.

Complete datasets (`complete`, e.g. `task=cifar100,complete`): bottleneck 64, scale 0.1, AdamW lr 4e-3
(1e-3 x 1024/256), weight decay 0.01, batch 1024, 100 epochs with 20 warmup, cosine to 0, random-resized crop +
flip, train -> test.
Memory: two passes per step (the dynamic one and the complete one) keep ~0.43 GiB of activations per example
without rematerialisation, so the recipe recomputes each block in the backward pass (`model.remat='full'`) and
accumulates gradients over 8 micro-batches of 128 (`train.accum_steps=8`; the update of the batch of 1024, the
rate loss of the whole batch's activation included) to fit one 16 GB device.
`python experiments/train_memory.py --recipes=dyt --settings=4:full,8:full,8:dots,16:full,32:,64:`
(XLA CPU memory analysis of the compiled training step, one device, float32):

  | recipe | global batch | accum_steps | micro-batch | remat | peak GiB | fits 16 GB |
  |---|---|---|---|---|---|---|
  | dyt | 1024 | 4 | 256 | full | 20.66 | no |
  | dyt | 1024 | 8 | 128 | full | 11.12 | yes |
  | dyt | 1024 | 8 | 128 | dots | 21.10 | no |
  | dyt | 1024 | 16 | 64 | full | 6.35 | yes |
  | dyt | 1024 | 32 | 32 | off | 15.33 | no |
  | dyt | 1024 | 64 | 16 | off | 7.84 | yes |

(Without remat the largest micro-batch that fits is 16: `--config.model.remat='' --config.train.accum_steps=64`.)
On N devices with `batch_size=1024` the micro-batch is split over them: `--config.train.accum_steps=8 / N` keeps
128 per device.

Inference: `--config.method.inference=threshold` (default, exact, bucketed real savings) | capacity (per-image
top-k, `capacity_rate`) | masked (reference). Other variants: `--config.method.dispatch=attention|attention_mlp|
layer` (`--config.method.attention_keys=selected` (default: skipped tokens are no keys/values) | all), MoE adapter
`--config.method.num_experts=4` (its gate reads `--config.method.moe_gate_input=block_input` (default) |
adapter_input).

Demo (embedded digits, random-init frozen Ti/4 backbone with 4 blocks at 16 px, 20 epochs = 440 steps of batch
64, see vit_adapt/config_lib.py: apply_demo; adapter bottleneck 32, see get_config; CPU):

  python -m vit_adapt.main --config=configs/dyt_vtab.py:demo --workdir=/tmp/dyt_demo

prints {"task": "demo/digits", "method": "dyt", "top1": ..., "trainable_params": ..., "gmacs_per_image": ...,
"throughput_images_per_s": ..., "peak_train_memory_bytes": ..., "wall_time_s": ..., "activation_rate": ...,
"gmacs": ...} (the last two: the method's evaluation statistics); `python experiments/demo_table.py
--methods=dyt` measured top-1 83.9%, 52,750 trainable parameters, 0.0237 GMACs per image (its results.json:
activation rate 0.581; docs/dyt.md).
"""

from vit_adapt import config_lib
from vit_adapt.errors import UserError


def get_config(arg=None):
  config, args = config_lib.make_config("dyt", arg, complete=False)
  config.model.head_init_std = 0.01
  if args["complete"]:
    if config.dataset.name.startswith("vtab/"):
      raise UserError(f"configs/dyt_vtab.py: `complete` is the complete-dataset recipe but the task is "
                      f"{config.dataset.name!r} (a VTAB-1k task). Pass a complete dataset, e.g. "
                      "--config=configs/dyt_vtab.py:task=cifar100,complete.")
    config.method.update(bottleneck=64, scale=0.1)
    config.dataset.update(split="train", eval_split="test", augment="inception_crop")
    config.train.update(batch_size=1024, epochs=100, warmup_epochs=20, accum_steps=8)  # fits 16 GB (docstring)
    config.model.remat = "full"
    config.optim.update(lr=4e-3, min_lr=0.0, wd=0.01)
  if args["demo"]:
    # Random-init backbone: routers see random features; the adapter is wider so the small model can learn.
    config.method.update(bottleneck=32)
  else:
    # The Google ViT-B/16 ImageNet-21k weights all four papers start from (README: "Get the weights").
    config.model.init = "weights/ViT-B_16.npz"
    config.train.keep_last_partial = True
  return config
