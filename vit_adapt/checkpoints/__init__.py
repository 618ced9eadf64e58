"""Checkpoint formats: reading files safely, foreign layouts -> our names, merging, the model directory.

  readers.py     file -> flat {name: array} (.npz, .safetensors, .pth/.bin), never unpickling
  google.py      Google ViT .npz layouts (original/AugReg pre-Linen, big_vision native, scan-stacked)
  timm_vit.py    timm / Hugging Face ViT names (`timm_to_params`, reused by the official-code importers)
  videomae.py    VideoMAE's .pth checkpoints -> the tubelet video model
  beit_pyramid.py  the BEiT-style segmentation backbone's pyramid convolutions -> the dense model's head/pyramid
  posemb.py      position-embedding resampling
  merge.py       merge into an initialised tree, one error listing every mismatch
  load.py        `load_backbone(path, params, *, config)` (used for `config.model.init`), `merge_model_params`
  weights.py     pre-trained backbones by name (`model.init=vit-b16-in21k`): URL table, cached verified download
  sources.py     the `convert --source=NAME` registry (methods register their `official-<method>` importers)
  model_dir.py   the vit_adapt model directory format (`vit_adapt.methods` builds and loads models with it)

This package never imports `vit_adapt.methods`.
"""

from vit_adapt.checkpoints.load import load_backbone, merge_model_params  # noqa: F401
from vit_adapt.checkpoints.readers import read_tensors  # noqa: F401
from vit_adapt.checkpoints.sources import get_source, register_source, source_names  # noqa: F401
from vit_adapt.checkpoints.timm_vit import timm_to_params  # noqa: F401
