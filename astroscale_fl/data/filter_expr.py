"""``task.filter``: a small, closed expression language for selecting rows.

A filter may contain only

- column names (a name that is not a Python identifier in backticks: ```B-V` > 0.5``),
- number and string literals (``20``, ``1e-3``, ``"apogee"``), ``True`` / ``False``,
- arithmetic ``+ - * / // % **`` and unary ``-`` / ``+``,
- comparisons ``== != < <= > >=``, chained ones included (``0 < parallax < 10``),
- ``in [...]`` / ``not in [...]`` with a list of literals,
- ``and`` / ``or`` / ``not`` and parentheses,
- the functions ``abs(x)``, ``isnull(x)`` and ``notnull(x)``.

The text is parsed with :mod:`ast` and every node is checked against an explicit whitelist
before anything is evaluated; anything else (attribute access, indexing, other calls, ``@name``,
lambdas, comprehensions, ...) is a one-line :class:`ConfigError` naming the offending token. The
expression is evaluated vectorised with numpy on whole columns: no Python code of the user's
ever runs, and a column's values never become code.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from astroscale_fl.errors import ConfigError, DataError

KEY = "task.filter"
MAX_CHARS = 2000  # a filter is a line of conditions; a longer text is a mistake (or an attack on the parser)
MAX_DEPTH = 64  # nesting of the parsed expression

_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_FUNCTIONS: dict[str, Callable[[object], object]] = {"abs": np.abs, "isnull": pd.isna, "notnull": pd.notna}
_HINTS = {ast.BitAnd: "'&' (write 'and')", ast.BitOr: "'|' (write 'or')", ast.Invert: "'~' (write 'not')",
          ast.BitXor: "'^'", ast.MatMult: "'@'", ast.LShift: "'<<'", ast.RShift: "'>>'",
          ast.Is: "'is'", ast.IsNot: "'is not'"}
_BACKTICKS = re.compile(r"`([^`]*)`")


@dataclass(frozen=True)
class RowFilter:
    """A checked filter expression: :meth:`mask` evaluates it on a table's columns."""

    text: str
    tree: ast.Expression
    quoted: dict[str, str]  # placeholder identifier -> backticked column name

    def mask(self, column: Callable[[str], np.ndarray], rows: int) -> np.ndarray:
        """The boolean row mask over ``rows`` rows; ``column(name)`` gives a column's values.

        A missing column or values the expression cannot combine (text compared with a number,
        arithmetic on text) are a one-line :class:`DataError`; a missing value never passes a
        comparison (as in pandas)."""
        with np.errstate(all="ignore"):
            result = _Evaluator(self, column).value(self.tree.body)
        if not _is_bool(result):
            raise ConfigError(f"{KEY} {self.text!r}: is not a condition (a comparison, isnull/notnull, or and/or/not of them)")
        return np.broadcast_to(np.asarray(result, dtype=bool), (rows,)).copy()

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``frame`` passing the filter."""
        def column(name: str) -> np.ndarray:
            if name not in frame.columns:
                raise DataError(f"{KEY} {self.text!r}: unknown column {name!r}; columns are {list(frame.columns)[:20]}")
            return frame[name].to_numpy()

        return frame.loc[self.mask(column, len(frame))]


def parse_filter(text: str) -> RowFilter:
    """Parse and check a filter expression (see the module doc); a :class:`ConfigError` names
    the first token outside the language."""
    text = str(text)
    if len(text) > MAX_CHARS:
        raise ConfigError(f"{KEY}: {len(text)} characters; a filter holds at most {MAX_CHARS}")
    quoted: dict[str, str] = {}

    def placeholder(match: re.Match) -> str:
        name = f"_column_{len(quoted)}_"
        quoted[name] = match.group(1)
        return name

    source = _BACKTICKS.sub(placeholder, text)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        at = (exc.offset or 0) - 1  # Python gives no offset (0) for an expression cut short
        found = re.compile(r"\w+|\S").match(source.strip(), at) if at >= 0 else None
        where = f"at {found.group(0)!r} (character {at + 1})" if found else "(it ends too early or is unbalanced)"
        raise ConfigError(f"{KEY} {text!r}: cannot parse {where}; "
                          f"expected conditions like \"snr > 20 and survey in ['apogee']\"") from None
    except (RecursionError, MemoryError, ValueError):
        raise ConfigError(f"{KEY} {text!r}: cannot parse (too deeply nested or not text)") from None
    _check(tree.body, text, source, 0)
    return RowFilter(text, tree, quoted)


def _check(node: ast.AST, text: str, source: str, depth: int) -> None:
    """Refuse any node outside the whitelist, naming it."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{KEY} {text!r}: nested deeper than {MAX_DEPTH} levels")

    def refuse(what: str) -> None:
        raise ConfigError(f"{KEY} {text!r}: {what} is not allowed; a filter holds column names, literals, "
                          "comparisons, in [...], and/or/not, arithmetic, abs/isnull/notnull")

    def children(*nodes: ast.AST) -> None:
        for child in nodes:
            _check(child, text, source, depth + 1)

    if isinstance(node, ast.Name):
        if not node.id.isidentifier() or node.id.startswith("__"):
            refuse(f"the name {node.id!r}")
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, (int, float, str)):  # bool is an int; None, bytes, Ellipsis are not data
            refuse(f"the literal {ast.get_source_segment(source, node) or repr(node.value)}")
    elif isinstance(node, ast.BoolOp):
        children(*node.values)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            refuse(_HINTS.get(type(node.op), type(node.op).__name__))
        children(node.operand)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _ARITHMETIC:
            refuse(_HINTS.get(type(node.op), type(node.op).__name__))
        children(node.left, node.right)
    elif isinstance(node, ast.Compare):
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)) and len(node.ops) > 1:
                refuse("'in' inside a chained comparison (write the conditions apart, joined by 'and')")
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, (ast.List, ast.Tuple)) or not all(_is_literal(e) for e in right.elts):
                    refuse(f"{ast.get_source_segment(source, right)!r} after 'in' (expected a list of literals, e.g. ['a', 'b'])")
            elif type(op) not in _COMPARE:
                refuse(_HINTS.get(type(op), type(op).__name__))
            else:
                children(right)
        children(node.left)
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name is None:
            children(node.func)  # names the innermost offending token (e.g. an attribute) first
        if name not in _FUNCTIONS:
            refuse(f"the call {(ast.get_source_segment(source, node.func) or '?')[:40]!r}(...) (functions: abs, isnull, notnull)")
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            refuse(f"{name}() with other than one argument")
        children(node.args[0])
    elif isinstance(node, ast.Attribute):
        children(node.value)
        refuse(f"attribute access '.{node.attr}'")
    elif isinstance(node, ast.Subscript):
        children(node.value)
        refuse(f"indexing {(ast.get_source_segment(source, node) or '[...]')[:40]!r}")
    else:
        segment = (ast.get_source_segment(source, node) or "")[:40]
        refuse(f"{type(node).__name__.lower()} {segment!r}")


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
        return isinstance(node, ast.Constant) and isinstance(node.value, (int, float))
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str))


def _literal(node: ast.AST) -> object:
    if isinstance(node, ast.UnaryOp):
        value = _literal(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    value = node.value  # type: ignore[attr-defined]
    return np.float64(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_)) or (isinstance(value, np.ndarray) and value.dtype == bool)


class _Evaluator:
    """Evaluates a checked tree on numpy columns (only the node types :func:`_check` lets through)."""

    def __init__(self, row_filter: RowFilter, column: Callable[[str], np.ndarray]):
        self.filter, self.column = row_filter, column

    def fail(self, node: ast.AST, why: str) -> DataError:
        segment = ast.unparse(node)
        for placeholder, name in self.filter.quoted.items():
            segment = segment.replace(placeholder, f"`{name}`")
        return DataError(f"{KEY} {self.filter.text!r}: cannot evaluate {segment[:60]!r} ({why})")

    def condition(self, node: ast.AST) -> np.ndarray | bool:
        value = self.value(node)
        if not _is_bool(value):
            raise self.fail(node, "not a condition: and/or/not combine comparisons")
        return value

    def value(self, node: ast.AST):
        if isinstance(node, ast.Name):
            return self.column(self.filter.quoted.get(node.id, node.id))
        if isinstance(node, (ast.Constant, ast.UnaryOp)) and _is_literal(node):
            return _literal(node)
        if isinstance(node, ast.BoolOp):
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = self.condition(node.values[0])
            for operand in node.values[1:]:
                out = combine(out, self.condition(operand))
            return out
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return np.logical_not(self.condition(node.operand))
            return self.numeric(node, lambda: -self.value(node.operand) if isinstance(node.op, ast.USub) else +self.value(node.operand))
        if isinstance(node, ast.BinOp):
            left, right = self.value(node.left), self.value(node.right)
            return self.numeric(node, lambda: _ARITHMETIC[type(node.op)](left, right))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            argument = self.value(node.args[0])
            return self.numeric(node, lambda: _FUNCTIONS[node.func.id](argument))  # type: ignore[attr-defined]
        raise self.fail(node, "unsupported")  # unreachable after _check; kept so a gap never evaluates

    def numeric(self, node: ast.AST, compute: Callable[[], object]):
        try:
            return compute()
        except (TypeError, ValueError, np.exceptions.DTypePromotionError) as exc:
            raise self.fail(node, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    def compare(self, node: ast.Compare):
        out = None
        left = self.value(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                values = [_literal(e) for e in right_node.elts]  # type: ignore[attr-defined]
                hit = self.numeric(node, lambda: pd.Series(np.atleast_1d(left)).isin(values).to_numpy())
                return hit if isinstance(op, ast.In) else ~hit  # never chained (see _check)
            right = self.value(right_node)
            result = self.numeric(node, lambda: np.asarray(_COMPARE[type(op)](left, right), dtype=bool))
            out = result if out is None else np.logical_and(out, result)
            left = right
        return out
