"""The codebase's shape, checked on its syntax tree: module dependencies, function sizes, and the
public API's positional arguments (docs/design.md, "Where things live")."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "cdm_jax"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 60
MAX_POSITIONAL = 5


def parse(path):
  return ast.parse(path.read_text(), str(path))


def imported_modules(tree) -> set[str]:
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def functions(tree):
  """(qualified name, node, enclosing class or None, nested in a function) of every function."""
  def visit(node, prefix, cls, nested):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        yield f"{prefix}{child.name}", child, cls, nested
        yield from visit(child, f"{prefix}{child.name}.", None, True)
      elif isinstance(child, ast.ClassDef):
        yield from visit(child, f"{prefix}{child.name}.", child, nested)
  yield from visit(tree, "", None, False)


# What each layer (a subpackage) may import; docs/design.md draws the same picture.
LAYERS = {
    "runtime": {"runtime"},
    "core": {"core", "runtime"},
    "models": {"models", "core", "runtime"},
    "data": {"data", "core", "runtime"},
    "sampling": {"sampling", "models", "data", "core", "runtime"},
    "training": {"training", "sampling", "models", "data", "core", "runtime"},
    "posttrain": {"posttrain", "training", "sampling", "models", "data", "core", "runtime"},
    "evaluation": {"evaluation", "posttrain", "training", "sampling", "models", "data", "core",
                   "runtime"},
}
MAX_MODULE_LINES = 350


def module_name(path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULE_NAMES = {module_name(path): path for path in MODULES}


def dependencies(tree) -> set[str]:
  """The cdm_jax modules a module imports (anywhere in it): `from cdm_jax.pkg import mod` names
  the submodule mod, not the package; `from cdm_jax.mod import name` the module mod."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      candidates = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      candidates = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULE_NAMES
                    else node.module for alias in node.names]
    else:
      continue
    found.update(name for name in candidates if name in MODULE_NAMES)
  return found


GRAPH = {name: dependencies(parse(path)) for name, path in MODULE_NAMES.items()}


def layer(name: str) -> str | None:
  parts = name.split(".")
  return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_below_it(package):
  offenders = sorted(f"{name} -> {dep}" for name, deps in GRAPH.items() if layer(name) == package
                     for dep in deps if layer(dep) not in LAYERS[package])
  assert not offenders, offenders


def test_core_imports_nothing_but_itself_and_the_registry():
  offenders = sorted(f"{name} -> {dep}" for name, deps in GRAPH.items() if layer(name) == "core"
                     for dep in deps
                     if layer(dep) != "core" and dep != "cdm_jax.runtime.registry")
  assert not offenders, offenders


def test_sampling_imports_no_training_or_posttraining_module():
  reached, todo = set(), ["cdm_jax.sampling"]
  while todo:
    for dep in GRAPH[todo.pop()] - reached:
      reached.add(dep)
      todo.append(dep)
  assert not {dep for dep in reached if layer(dep) in ("training", "posttrain", "evaluation",
                                                       "cli")}, sorted(reached)


def test_no_import_cycle():
  state, cycles = {}, []

  def visit(name, stack):
    state[name] = "open"
    for dep in sorted(GRAPH[name]):
      if state.get(dep) == "open":
        cycles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep, stack + [dep])
    state[name] = "done"

  for name in sorted(GRAPH):
    if name not in state:
      visit(name, [name])
  assert not cycles, cycles


def test_modules_are_short():
  too_long = {name: len(path.read_text().splitlines()) for name, path in MODULE_NAMES.items()}
  assert not {k: n for k, n in too_long.items() if n > MAX_MODULE_LINES}


def test_functions_are_short():
  too_long = []
  for path in MODULES:
    for name, node, cls, _ in functions(parse(path)):
      is_model_call = cls is not None and node.name == "__call__"
      lines = node.end_lineno - node.lineno + 1
      if lines > MAX_FUNCTION_LINES and not is_model_call:
        too_long.append(f"{path.relative_to(PACKAGE)}:{name} ({lines} lines)")
  assert not too_long, too_long


def test_public_functions_take_at_most_five_positional_arguments():
  offenders = []
  for path in MODULES:
    for name, node, cls, nested in functions(parse(path)):
      if nested or any(part.startswith("_") and not part.endswith("__") for part in name.split(".")):
        continue  # private, or local to a function
      args = node.args.posonlyargs + node.args.args
      if cls is not None and args and args[0].arg in ("self", "cls"):
        args = args[1:]
      if len(args) > MAX_POSITIONAL:
        offenders.append(f"{path.relative_to(PACKAGE)}:{name} ({len(args)})")
  assert not offenders, offenders


def test_every_script_is_named_in_the_docs():
  """No orphan scripts: each file under experiments/ and benchmarks/ (their result folders aside)
  is named, by its path, in README.md or docs/."""
  root = PACKAGE.parent
  docs = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
  scripts = [p for folder in ("experiments", "benchmarks") for p in (root / folder).rglob("*")
             if p.is_file() and p.suffix in (".py", ".sh") and "results" not in p.parts
             and "__pycache__" not in p.parts]
  assert scripts
  assert not [str(p.relative_to(root)) for p in scripts if str(p.relative_to(root)) not in docs]
