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


@pytest.mark.parametrize("module", ["generate", "evaluate"])
def test_generation_and_evaluation_do_not_depend_on_the_training_loop(module):
  imports = imported_modules(parse(PACKAGE / f"{module}.py"))
  assert "cdm_jax.train" not in imports, sorted(imports)


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
