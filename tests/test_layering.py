"""The package structure stays as built (docs/architecture.md): every module imports, no import cycle, lower
layers never import higher ones, and the package's own modules are imported at module level except in entry
points (where a late import keeps `--help` fast).

Layers, lowest first; a module may import its own package and any lower layer, never a peer or a higher one:

  {errors, machine} < registry < cli < {models, data} < checkpoints < efficiency < {methods, tasks} < config_lib < train < sweep
  < entry points (main, convert, predict, curve, report, met_calibrate, shared_features, pack, */__main__)
"""

import ast
import importlib
import os
import pkgutil

import pytest

import vit_adapt

PACKAGE_DIR = os.path.dirname(vit_adapt.__file__)
ENTRY_POINTS = {"vit_adapt.main", "vit_adapt.convert", "vit_adapt.predict", "vit_adapt.curve", "vit_adapt.report",
                "vit_adapt.met_calibrate", "vit_adapt.shared_features", "vit_adapt.pack", "vit_adapt.data.prepare"}
LAYERS = {
    "vit_adapt.errors": 0, "vit_adapt.machine": 0, "vit_adapt.registry": 0.5, "vit_adapt.cli": 1,
    "vit_adapt.models": 2, "vit_adapt.data": 2,
    "vit_adapt.checkpoints": 3, "vit_adapt.efficiency": 3.5, "vit_adapt.methods": 4, "vit_adapt.tasks": 4,
    "vit_adapt.config_lib": 5, "vit_adapt.train": 7, "vit_adapt.sweep": 8, "vit_adapt": 9,
}
ENTRY_LAYER = 10


def _modules() -> dict[str, str]:
  """module name -> file path, for every module of the package."""
  out = {"vit_adapt": vit_adapt.__file__}
  for info in pkgutil.walk_packages([PACKAGE_DIR], "vit_adapt."):
    spec = importlib.util.find_spec(info.name)
    out[info.name] = spec.origin
  return out


MODULES = _modules()


def _is_entry(name: str) -> bool:
  return name in ENTRY_POINTS or name.endswith(".__main__")


def _unit(name: str) -> str:
  """The layered unit a module belongs to: its top-level package, or the top-level module itself."""
  parts = name.split(".")
  return ".".join(parts[:2]) if len(parts) > 1 else name


def _layer(name: str) -> int:
  if _is_entry(name):
    return ENTRY_LAYER
  return LAYERS[_unit(name)]


def _imports(name: str):
  """-> [(imported module, lineno, inside a function)] of the package's own modules."""
  tree = ast.parse(open(MODULES[name]).read())
  out = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      if isinstance(child, ast.Import):
        out.extend((a.name, child.lineno, in_function) for a in child.names if a.name.startswith("vit_adapt"))
      elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("vit_adapt"):
        for a in child.names:
          sub = f"{child.module}.{a.name}"
          out.append((sub if sub in MODULES else child.module, child.lineno, in_function))
      visit(child, inner)

  visit(tree, False)
  return out


def test_every_layer_is_assigned():
  assert {_unit(n) for n in MODULES if not _is_entry(n)} <= set(LAYERS), "add new packages to LAYERS"
  top_level = [n for n in MODULES if n.count(".") == 1 and not os.path.basename(MODULES[n]) == "__init__.py"]
  assert len(top_level) <= 12, f"the top level holds at most a dozen modules, has {sorted(top_level)}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not _is_entry(n)))
def test_module_imports(name):
  importlib.import_module(name)


def test_lower_layers_never_import_higher_ones():
  bad = []
  for name in MODULES:
    for target, line, _ in _imports(name):
      if target == "vit_adapt" or _unit(target) == _unit(name):
        continue
      if _layer(target) >= _layer(name):
        bad.append(f"{name}:{line} imports {target} (layer {_layer(target)} >= {_layer(name)})")
  assert not bad, "\n".join(bad)


def test_no_import_cycles():
  graph = {n: {t for t, _, _ in _imports(n) if t in MODULES and t != n} for n in MODULES}
  state: dict[str, int] = {}
  cycles = []

  def dfs(n, path):
    state[n] = 1
    for t in sorted(graph[n]):
      if state.get(t) == 1:
        cycles.append(" -> ".join(path[path.index(t):] + [t]) if t in path else f"{n} -> {t}")
      elif t not in state:
        dfs(t, path + [t])
    state[n] = 2

  for n in sorted(graph):
    if n not in state:
      dfs(n, [n])
  assert not cycles, "\n".join(cycles)


def test_own_modules_are_imported_at_module_level_outside_entry_points():
  late = [f"{n}:{line} imports {t} inside a function" for n in MODULES if not _is_entry(n)
          for t, line, inside in _imports(n) if inside]
  allowed = {"vit_adapt.sweep.plots"}  # matplotlib (heavy): imported only when a report draws its plots
  late = [x for x in late if x.split(" imports ")[1].split(" ")[0] not in allowed]
  assert not late, "\n".join(late)


def test_no_module_outside_methods_checks_a_method_by_name():
  """Method-specific behaviour lives on the Method record: no `config.method.name == 'x'` outside methods/."""
  from vit_adapt import methods
  # 'full' and 'linear' are also plain words (a model directory's 'full' scope, a 'linear' layer).
  names = set(methods.names()) - {"full", "linear"}
  bad = []
  for name, path in MODULES.items():
    if name.startswith("vit_adapt.methods") or name == "vit_adapt.met_calibrate":  # the MET tool's CLI alias
      continue
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
        bad.append(f"{name}:{node.lineno} names method {node.value!r}")
  assert not bad, "\n".join(bad)


def test_late_third_party_imports_say_why():
  """Outside entry points a function-local import is an optional heavy dependency, with a comment saying so."""
  silent = []
  for name, path in MODULES.items():
    if _is_entry(name):
      continue
    lines = open(path).read().splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for child in ast.walk(node):
          if isinstance(child, (ast.Import, ast.ImportFrom)) and "#" not in lines[child.lineno - 1]:
            silent.append(f"{name}:{child.lineno}: {lines[child.lineno - 1].strip()}")
  assert not silent, "\n".join(silent)
