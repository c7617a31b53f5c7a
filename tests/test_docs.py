"""The reference pages in docs/ stay complete: every config field and every message is in them.

Both tests read source and Markdown only (no training, no device work) and run in seconds.
"""
import ast
import pathlib
import re

import ml_collections

from lth_jax import configs
from lth_jax import families

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FAMILIES = ("ae", "vae", "dcgan")


# ------------------------------------------------------------------------ config reference
def _fields(config: ml_collections.ConfigDict, prefix: str = ""):
  """Dotted names of every leaf field (``train.optimizer.lr``); sections are walked into."""
  for key, value in config.items():
    name = prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      yield from _fields(value, name + ".")
    else:
      yield name


def _config_fields() -> set[str]:
  return {field for family in FAMILIES for preset in configs.PRESETS
          for field in _fields(configs.get_config(family, "fashion_mnist", preset))}


def _documented_fields() -> set[str]:
  """The names in the first cell of a table row of config_reference.md: ``| `train.steps` |``."""
  text = (DOCS / "config_reference.md").read_text(encoding="utf-8")
  return set(re.findall(r"^\|\s*`([A-Za-z_][\w.]*)`\s*\|", text, flags=re.MULTILINE))


def test_config_reference_lists_every_field():
  """Every leaf field of ``get_config(family, 'fashion_mnist', preset)``, for every family and
  preset, has a row in docs/config_reference.md: a table row whose first cell is the dotted
  name in backticks (a mention elsewhere in the text does not count)."""
  fields = _config_fields()
  assert len(fields) > 50 and "train.optimizer.lr" in fields    # the walk itself works
  missing = sorted(fields - _documented_fields())
  assert not missing, f"config fields missing from docs/config_reference.md: {missing}"


def test_config_reference_lists_no_unknown_field():
  """No row of docs/config_reference.md documents a field that no config has (renamed or
  removed fields must leave the page too)."""
  stale = sorted(_documented_fields() - _config_fields())
  assert not stale, f"docs/config_reference.md documents fields no config has: {stale}"


def test_family_defaults_in_config_reference_match_the_registry():
  """Every ``field=value`` span given as a family's default in config_reference.md is the
  family's default config value: the second cell of a family row (``| WGAN (`wgan`) | ...
  `train.steps=4000` ... |``) and a family bullet up to its ```paper`:`` (``* `resnet_vae`: ...``).
  """
  text = (DOCS / "config_reference.md").read_text(encoding="utf-8")
  rows = re.findall(r"^\|[^|`]*\(`(\w+)`\)\s*\|([^|]*)\|", text, re.MULTILINE)
  bullets = re.findall(r"^\* `(\w+)`: ((?:.|\n(?! *\n|\* ))*?)(?:`paper`:|\n *\n|\n\* )", text,
                       re.MULTILINE)
  assert {"wgan", "resnet_vae"} <= {family for family, _ in rows + bullets}
  checked = 0
  for family, cells in rows + bullets:
    if family not in families.names():
      continue
    config = configs.get_config(family, "fashion_mnist")
    for field, value in re.findall(r"`([a-z_]+\.[\w.]+)=([^`]+)`", cells):
      node = config
      for part in field.split("."):
        node = node[part]
      want = ast.literal_eval(value)
      got = tuple(node) if isinstance(node, (list, tuple)) else node
      assert got == want, f"docs/config_reference.md, {family}: {field}={value}, config: {node!r}"
      checked += 1
  assert checked > 20                                         # the rows were found


# ------------------------------------------------------------------------ troubleshooting
# Calls whose first argument is a message: exception constructors (any name ending in Error or
# Exception), experiment_main.fail and logging.warning / logging.error.
_MESSAGE_CALLS = re.compile(r"^(?:\w*Error|\w*Exception|fail|warning|error)$")
_PRINTF = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[sdifgrxe]")
_MIN_WORDS = 2


def _call_name(func: ast.expr) -> str:
  if isinstance(func, ast.Name):
    return func.id
  if isinstance(func, ast.Attribute):
    return func.attr
  return ""


def _pieces(node: ast.expr, printf: bool) -> list | None:
  """A string expression as literal pieces and ``None`` placeholders; None if it is not one.

  Literals, f-strings (each ``{...}`` a placeholder), ``+`` concatenations (a non-string operand
  is a placeholder) and ``%`` directives of logging calls (``printf``).
  """
  if isinstance(node, ast.Constant) and isinstance(node.value, str):
    if not printf:
      return [node.value]
    out = []
    for i, text in enumerate(_PRINTF.split(node.value)):
      out += ([None] if i else []) + [text]
    return out
  if isinstance(node, ast.JoinedStr):
    return [v.value if isinstance(v, ast.Constant) else None for v in node.values]
  if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
    left, right = _pieces(node.left, printf), _pieces(node.right, printf)
    if left is None and right is None:
      return None
    return (left if left is not None else [None]) + (right if right is not None else [None])
  return None


def _string_exprs(node: ast.expr, function: ast.AST | None, module: ast.Module) -> list:
  """The string expressions a message argument can be.

  ``a if c else b``: both branches. A plain name: what it is assigned in the enclosing function
  (a string expression, or a call of a function of the same module or of a module of lth_jax
  named as imported, whose ``return`` values are string expressions, e.g.
  ``risk = meshes.cpu_collective_deadlock_risk(mesh)``).
  """
  if isinstance(node, ast.IfExp):
    return (_string_exprs(node.body, function, module)
            + _string_exprs(node.orelse, function, module))
  if isinstance(node, ast.Name) and function is not None:
    found = []
    for assign in ast.walk(function):
      if not (isinstance(assign, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == node.id for t in assign.targets)):
        continue
      value = assign.value
      called = _called_function(value, module)
      if called is not None:
        found += [r.value for r in ast.walk(called)
                  if isinstance(r, ast.Return) and r.value is not None]
      elif not isinstance(value, ast.Call):
        found.append(value)
    return found
  return [node]


def _called_function(value: ast.expr, module: ast.Module) -> ast.FunctionDef | None:
  """The definition called by ``value``: ``f(...)`` of ``module``, or ``m.f(...)`` of
  ``lth_jax/m.py``; None otherwise."""
  if not isinstance(value, ast.Call):
    return None
  func = value.func
  if isinstance(func, ast.Name):
    where, name = module, func.id
  elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (
      ROOT / "lth_jax" / f"{func.value.id}.py").exists():
    where = ast.parse((ROOT / "lth_jax" / f"{func.value.id}.py").read_text(encoding="utf-8"))
    name = func.attr
  else:
    return None
  return next((d for d in where.body if isinstance(d, ast.FunctionDef) and d.name == name), None)


def _functions(module: ast.Module):
  """``(node, innermost enclosing function or None)`` for every node of ``module``."""
  def visit(node, function):
    for child in ast.iter_child_nodes(node):
      inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
      yield child, function
      yield from visit(child, inner)
  yield from visit(module, None)


def _template(pieces: list) -> str:
  """Pieces as a readable template: ``<...>`` for each placeholder, whitespace collapsed."""
  return re.sub(r"\s+", " ", "".join("<...>" if p is None else p for p in pieces)).strip()


def messages() -> dict[str, list]:
  """``{template: pieces}`` of every message that lth_jax and experiments/ can print.

  What counts as a message: the first argument of a call of an exception class (a name ending
  in ``Error`` or ``Exception``: ``raise ValueError(...)``, ``ConfigError(...)``, an error built
  by a helper and raised elsewhere), of ``fail(...)`` (experiment_main's one-line exit) and of
  ``logging.warning`` / ``logging.error``, when that argument is a string: a literal, an
  f-string, a ``+`` concatenation, either branch of ``a if c else b``, or a local name assigned
  one of these (or assigned the result of a function of lth_jax returning them). Placeholders
  are the f-strings' ``{...}``, non-string ``+`` operands and logging's ``%s``-style directives.

  Not counted: arguments that are not string expressions (``str(e)``, a re-raised exception),
  and wrappers whose literal text has fewer than two words (``f"{type(e).__name__}: {e}"``,
  ``f"--config={spec}: {type(e).__name__}: {e}"``): they only prefix another message, which is
  counted where it is raised.
  """
  found = {}
  for path in sorted(list((ROOT / "lth_jax").rglob("*.py"))
                     + list((ROOT / "experiments").rglob("*.py"))):
    module = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node, function in _functions(module):
      if not (isinstance(node, ast.Call) and node.args and _MESSAGE_CALLS.match(
          _call_name(node.func))):
        continue
      printf = _call_name(node.func) in ("warning", "error")
      for expr in _string_exprs(node.args[0], function, module):
        pieces = _pieces(expr, printf)
        if pieces is None:
          continue
        literal = " ".join(p for p in pieces if p is not None)
        if len(re.findall(r"[A-Za-z]{2,}", literal)) < _MIN_WORDS:
          continue
        found[_template(pieces)] = pieces
  return found


_PLACEHOLDER = r"<[^<>`\n]*>"                 # how the page writes a varying part: <field>
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def _pattern(pieces: list) -> re.Pattern:
  """The message as the page must write it: the whole of one code span, its literal text exact
  (whitespace runs as one space) and each placeholder written as one ``<...>`` token."""
  merged = []
  for piece in pieces:                       # "a " + "b" is one literal
    if piece is not None and merged and merged[-1] is not None:
      merged[-1] += piece
    else:
      merged.append(piece)
  text = ["\0" if p is None else re.sub(r"\s+", " ", p) for p in merged]
  template = "".join(text).strip()           # "\0" marks a placeholder
  return re.compile(_PLACEHOLDER.join(re.escape(t) for t in template.split("\0")))


def _code_spans(text: str) -> list[str]:
  """The contents of the page's inline code spans (single or multiple backticks), whitespace
  collapsed; a span never crosses a line."""
  return [re.sub(r"\s+", " ", m.group(2)).strip()
          for line in text.splitlines() for m in _CODE_SPAN.finditer(line)]


def test_troubleshooting_covers_every_message():
  """Every message of :func:`messages` is on docs/troubleshooting.md as a template: one inline
  code span that is exactly the message, each placeholder written as a ``<...>`` token
  (``<field> must be >= <minimum>, got <value>``). A concrete example of a message (``train.steps
  must be >= 1, got 0``) does not count, so a general message cannot be covered by an example of
  a more specific one."""
  found = messages()
  # The extraction itself works: known messages of each kind are found.
  for known in ("tickets.seeds is empty", "missing required flag --config (path.py[:preset])",
                "<...> must be an int, got <...> (<...>)",
                "seed <...>: no early-bird ticket drawn by step <...>"):
    assert any(t.startswith(known) for t in found), known
  assert any("CPU collectives can deadlock" in t for t in found)   # through `raise X(name)`
  assert len(found) > 150
  spans = _code_spans((DOCS / "troubleshooting.md").read_text(encoding="utf-8"))
  missing = sorted(t for t, pieces in found.items()
                   if not any(_pattern(pieces).fullmatch(span) for span in spans))
  assert not missing, ("messages missing from docs/troubleshooting.md:\n  "
                       + "\n  ".join(missing))
