"""The docstrings of configs/*.py cannot go stale silently.

Each config file's docstring holds the command that runs it and what it prints. For every file this test
  * builds the file's `:demo` config, shrinks it to the tiny test model (the settings of `make_tiny_config` in
    conftest.py, efficiency measurement kept on: it is cheap at this size and writes the throughput keys),
    runs `train_and_evaluate` and checks that every key shown in the docstring's printed `{...}` JSON lines is a
    key of the results the run returns (= WORKDIR/results.json, of which main.py prints a subset), and that every
    other line it quotes as printed ("...", 20 characters or more, `...` = anything) is in the run's stdout;
  * checks that the demo paragraph's image size, block count, variant, epochs and steps are the `:demo` config's;
  * checks that the docstring's `--config=` flags name the file itself, its `python -m vit_adapt.X` modules
    exist, and every repository path it names (experiments/..., docs/..., tests/..., README.md) exists.
"""

import glob
import importlib.util
import os
import re

import pytest
from conftest import shrink

from vit_adapt import tasks, train
from vit_adapt.train import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))

# A printed JSON line: `{"key": value, ...}`, possibly wrapped over lines, values may be `...` placeholders.
_JSON = re.compile(r"\{[^{}]*\}")
_KEY = re.compile(r'"(\w+)":')
_PATH = re.compile(r"\b((?:configs|experiments|docs|tests|vit_adapt)/[\w/.-]*\w\.(?:py|md|png|ipynb)|README\.md)\b")


def _module(name):
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _printed_keys(doc):
  return {k for block in _JSON.findall(doc) for k in _KEY.findall(block)}


def _printed_lines(doc):
  """Quoted printed lines outside the JSON lines, as regexes (`...` stands for anything)."""
  quoted = re.findall(r'"([^"\n]{20,})"', _JSON.sub("", doc))
  return [(q, ".*".join(map(re.escape, q.split("...")))) for q in quoted]


def _demo_paragraph(doc):
  """From the `Demo (` paragraph to the end: what the docstring says about the `:demo` run."""
  start = doc.find("\nDemo (")
  assert start >= 0, "the docstring has no 'Demo (...)' paragraph describing the :demo run"
  return doc[start:]


def _shrink(c):
  """`make_tiny_config`'s tiny model and 2 steps of batch 8 (conftest.py), plus what some methods need."""
  shrink(c)
  # On (unlike make_tiny_config): the throughput keys main.py prints only exist when it is measured.
  c.efficiency.update(enabled=True, batch_size=8, repeats=1)
  m = c.method
  if "bottleneck" in m and m.get("dense_adapter") != "released":  # the released adapter fixes its width
    m.bottleneck = 8
  if m.name == "met":
    m.exits = (1, 2)  # the exits must end at the last block (the demo's (1, 2, 3, 4) is for 4 blocks)
    m.num_buckets = 2  # fewer precompiled early-exit capacities: faster compile
  if m.name == "sparse_tuning":
    m.sparse_blocks = (1,)  # zero-based, below the depth (the demo's (1, 2, 3) is for 4 blocks)
  if m.name == "synqt":
    c.train.batch_size = 64  # the feature cache is built over all 1437 training images at the training batch size
  if m.name == "dyt":
    m.num_buckets = 2  # fewer bucketed-dispatch branches: faster compile
  if c.model.head != "linear":  # a dense head reads 4 blocks of the 2-block model
    c.model.update(feature_blocks=(0, 1, 1, 1), head_channels=16, aux_channels=8)
  return c


def test_parsers_find_wrapped_json_keys_and_quoted_lines():
  doc = 'prints {"task": "demo/digits", "top1": 0.9...,\n "wall_time_s": ...} then "Done: 12 examples x ... MiB"'
  assert _printed_keys(doc) == {"task", "top1", "wall_time_s"}
  [(line, pattern)] = _printed_lines(doc)
  assert re.search(pattern, "Done: 12 examples x 0.19 MiB") and not re.search(pattern, "Done: 13 examples x 1 MiB")


def test_dataset_and_met_fields_are_documented():
  """Every config.dataset field is in config_lib's field list; every MET field is named in docs/met.md (a field
  whose default is ours must say so there): e.g. dataset.split_lists (FGVC over tfds), method.exit_tokens."""
  from vit_adapt import config_lib
  from vit_adapt.methods import met
  doc = config_lib.__doc__
  missing = [k for k in config_lib.base_config("linear").dataset.keys() if not re.search(rf"\b{k}\b", doc)]
  assert not missing, f"config.dataset fields not in vit_adapt/config_lib.py's docstring: {missing}"
  with open(os.path.join(ROOT, "docs", "met.md")) as f:
    met_doc = f.read()
  missing = [k for k in met.defaults().keys()
             if k != "name" and not re.search(rf"`(?:config\.method\.)?{k}[`=]", met_doc)]
  assert not missing, f"MET fields not named in docs/met.md: {missing}"


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_commands_and_paths(name):
  doc = _module(name).__doc__
  assert doc, f"configs/{name} has no docstring"
  flags = re.findall(r"--config=configs/([\w.]+\.py)", doc)
  assert flags and set(flags) == {name}, f"configs/{name}: --config flags name {sorted(set(flags))}"
  assert f"python -m vit_adapt.main --config=configs/{name}:demo" in doc
  for mod in re.findall(r"python -m (vit_adapt(?:\.\w+)+)", doc):
    assert importlib.util.find_spec(mod) is not None, f"configs/{name} runs {mod}, which does not exist"
  for path in _PATH.findall(doc):
    assert os.path.exists(os.path.join(ROOT, path)), f"configs/{name} names {path}, which does not exist"
  assert _printed_keys(doc), f"configs/{name} shows no printed JSON line"


@pytest.mark.parametrize("name", CONFIGS)
def test_demo_paragraph_matches_the_demo_config(name):
  module = _module(name)
  c = module.get_config("demo")
  demo = _demo_paragraph(module.__doc__)
  for px in re.findall(r"(\d+) px", demo):
    assert int(px) == c.model.image_size, f"configs/{name}: the demo runs at {c.model.image_size} px, not {px}"
  for depth in re.findall(r"(\d+) blocks", demo):
    assert int(depth) == c.model.depth, f"configs/{name}: the demo model has {c.model.depth} blocks, not {depth}"
  for variant in re.findall(r"\b((?:mu|Ti|S|M|B|L|H)/\d+)\b", demo):
    assert variant == c.model.variant, f"configs/{name}: the demo variant is {c.model.variant}, not {variant}"
  for epochs in re.findall(r"(\d+) epochs", demo):
    assert int(epochs) == c.train.epochs, f"configs/{name}: the demo trains {c.train.epochs} epochs, not {epochs}"
  _, total, _ = optim.schedule_lengths(c, tasks.for_config(c).num_examples(c, c.dataset.split))
  for steps in re.findall(r"(\d+) steps", demo):
    assert int(steps) == total, f"configs/{name}: the demo trains {total} steps, not {steps}"


@pytest.mark.parametrize("name", CONFIGS)
def test_printed_keys_are_written_by_the_run(name, fast_compile, tmp_path, capsys):
  module = _module(name)
  keys = _printed_keys(module.__doc__)
  results = train.train_and_evaluate(_shrink(module.get_config("demo")), str(tmp_path))
  missing = sorted(keys - set(results))
  assert not missing, f"configs/{name} shows printed keys the run does not write: {missing}"
  out = capsys.readouterr().out
  for line, pattern in _printed_lines(module.__doc__):
    assert re.search(pattern, out), f"configs/{name} quotes a printed line the run does not print: {line!r}"
