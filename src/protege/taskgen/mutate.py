"""Small, single-line bugs in a Python file's functions, found with the standard library's `ast`.

Each `Mutation` rewrites one span of one line, so the gold patch that reverts it is a one-line diff and the
rest of the file keeps its exact formatting (the node positions `ast` gives are used to cut the text;
nothing is re-printed). The kinds, after SWE-smith's procedural modifiers:

| kind | example |
|---|---|
| `flip_comparison` | `a < b` -> `a >= b`, `x in s` -> `x not in s`, `a is None` -> `a is not None` |
| `off_by_one` | `a < b` -> `a <= b`, `s[:n]` -> `s[:n + 1]`, `range(1, n)` -> `range(1, n - 1)` |
| `swap_arguments` | `f(a, b)` -> `f(b, a)`, `a - b` -> `b - a` |
| `drop_negation` | `not ok` -> `ok`, `-x` -> `x` |
| `change_constant` | `2` -> `3`, `True` -> `False` |
| `change_operator` | `a + b` -> `a - b`, `a and b` -> `a or b` |
| `drop_call` | `name.strip()` -> `name`, `sorted(xs)` -> `xs` |

Only code inside function bodies is touched (docstrings, f-strings and decorators never); a mutation
that does not change the parsed program (the same AST) is dropped here, one no test notices later.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

KINDS = (
    "flip_comparison",
    "off_by_one",
    "swap_arguments",
    "drop_negation",
    "change_constant",
    "change_operator",
    "drop_call",
)
_FLIP = {
    ast.Lt: ">=",
    ast.GtE: "<",
    ast.Gt: "<=",
    ast.LtE: ">",
    ast.Eq: "!=",
    ast.NotEq: "==",
    ast.In: "not in",
    ast.NotIn: "in",
    ast.Is: "is not",
    ast.IsNot: "is",
}
_BOUNDARY = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">"}
_ARITH = {ast.Add: "-", ast.Sub: "+", ast.Mult: "//", ast.FloorDiv: "*", ast.Div: "*", ast.Mod: "//"}
_NON_COMMUTATIVE = (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
# calls that return a changed copy of their input: dropping one keeps the program running, wrongly
_PURE_METHODS = {
    "strip",
    "lstrip",
    "rstrip",
    "lower",
    "upper",
    "casefold",
    "title",
    "copy",
    "items",
    "keys",
    "values",
}
_WRAPPERS = {"abs", "int", "float", "str", "sorted", "reversed", "list", "tuple", "set", "round", "len"}
_OPERATOR = re.compile(r"not\s+in|is\s+not|<=|>=|==|!=|<|>|\bin\b|\bis\b|\band\b|\bor\b|//|\*\*|[-+*/%]")


@dataclass(frozen=True)
class Mutation:
    """Replace `old` by `new` at `line`[`col`:`end_col`] (1-based line, 0-based columns) of `path`."""

    path: str
    function: str
    kind: str
    line: int
    col: int
    end_col: int
    old: str
    new: str

    @property
    def mutation_id(self) -> str:
        key = f"{self.path}:{self.line}:{self.col}:{self.end_col}:{self.old}->{self.new}"
        return hashlib.sha256(key.encode()).hexdigest()[:10]

    def apply(self, source: str) -> str:
        lines = source.splitlines(keepends=True)
        text = lines[self.line - 1]
        if text[self.col : self.end_col] != self.old:
            raise ValueError(f"{self.path}:{self.line}: expected {self.old!r} at column {self.col}")
        lines[self.line - 1] = text[: self.col] + self.new + text[self.end_col :]
        return "".join(lines)

    def describe(self) -> str:
        return f"{self.path}:{self.line} in {self.function}: {self.kind}: {self.old!r} -> {self.new!r}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mutations(path: str, source: str) -> list[Mutation]:
    """Every mutation of `source` (the text of `path`), in file order; unparsable files give none."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines(keepends=True)
    original = ast.dump(tree)
    found: dict[str, Mutation] = {}
    for function, node in _function_nodes(tree):
        for kind, line, col, end_col, new in _sites(node, lines):
            old = lines[line - 1][col:end_col]
            if not old or old == new:
                continue
            mutation = Mutation(path, function, kind, line, col, end_col, old, new)
            if mutation.mutation_id not in found and _changes_program(mutation, source, original):
                found[mutation.mutation_id] = mutation
    return sorted(found.values(), key=lambda m: (m.line, m.col, m.kind, m.new))


def _changes_program(mutation: Mutation, source: str, original: str) -> bool:
    try:
        return ast.dump(ast.parse(mutation.apply(source))) != original
    except (SyntaxError, ValueError):
        return False


def _function_nodes(tree: ast.Module) -> Iterator[tuple[str, ast.AST]]:
    """(qualified name, body node) of every function body statement, nested functions under their
    outer function's name; decorators, defaults and annotations excluded."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                body = child.body
                if body and _is_docstring(body[0]):
                    body = body[1:]
                for statement in body:
                    yield f"{prefix}{child.name}", statement

    yield from walk(tree, "")


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _inside_fstrings(root: ast.AST) -> set[int]:
    return {id(n) for f in ast.walk(root) if isinstance(f, ast.JoinedStr) for n in ast.walk(f)}


Site = tuple[str, int, int, int, str]


def _sites(root: ast.AST, lines: list[str]) -> Iterator[Site]:
    skip = _inside_fstrings(root)
    slice_bounds = {
        id(bound)
        for n in ast.walk(root)
        if isinstance(n, ast.Slice)
        for bound in (n.lower, n.upper)
        if bound is not None
    }
    for node in ast.walk(root):
        if id(node) in skip or not _one_line(node):
            continue
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            yield from _compare_sites(node, lines)
        elif isinstance(node, ast.BinOp):
            yield from _binop_sites(node, lines)
        elif isinstance(node, ast.BoolOp):
            yield from _operator_site(
                node.values[0],
                node.values[1],
                lines,
                "change_operator",
                "or" if isinstance(node.op, ast.And) else "and",
            )
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
            text = _segment(node, lines)
            keyword = "not" if isinstance(node.op, ast.Not) else "-"
            if text.startswith(keyword):  # keep the operand's own brackets: `not (a or b)` -> `(a or b)`
                yield (
                    "drop_negation",
                    node.lineno,
                    node.col_offset,
                    node.end_col_offset,
                    text[len(keyword) :].lstrip(),
                )
        elif isinstance(node, ast.Call):
            yield from _swap_sites(node, lines)
            yield from _drop_call_sites(node, lines)
        elif isinstance(node, ast.Constant) and not isinstance(node.value, str | bytes):
            yield from _constant_sites(node, id(node) in slice_bounds)
        elif id(node) in slice_bounds and isinstance(node, ast.Name | ast.Attribute | ast.Call | ast.BinOp):
            text = _segment(node, lines)
            for step in ("+ 1", "- 1"):
                yield "off_by_one", node.lineno, node.col_offset, node.end_col_offset, f"{text} {step}"


def _compare_sites(node: ast.Compare, lines: list[str]) -> Iterator[Site]:
    op = type(node.ops[0])
    left, right = node.left, node.comparators[0]
    yield from _operator_site(left, right, lines, "flip_comparison", _FLIP[op])
    if op in _BOUNDARY:
        yield from _operator_site(left, right, lines, "off_by_one", _BOUNDARY[op])


def _binop_sites(node: ast.BinOp, lines: list[str]) -> Iterator[Site]:
    if type(node.op) in _ARITH:
        yield from _operator_site(node.left, node.right, lines, "change_operator", _ARITH[type(node.op)])
    if isinstance(node.op, _NON_COMMUTATIVE) and node.left.lineno == node.right.end_lineno:
        left, right = _segment(node.left, lines), _segment(node.right, lines)
        between = lines[node.lineno - 1][node.left.end_col_offset : node.right.col_offset]
        if left != right and not _parenthesised(between):
            yield (
                "swap_arguments",
                node.lineno,
                node.left.col_offset,
                node.right.end_col_offset,
                (f"{right}{between}{left}"),
            )


def _swap_sites(node: ast.Call, lines: list[str]) -> Iterator[Site]:
    args = node.args
    if len(args) < 2 or any(isinstance(a, ast.Starred) for a in args[:2]):
        return
    first, second = args[0], args[1]
    if first.lineno != second.end_lineno:
        return
    a, b = _segment(first, lines), _segment(second, lines)
    between = lines[first.lineno - 1][first.end_col_offset : second.col_offset]
    if a != b and between.strip() == ",":
        yield "swap_arguments", first.lineno, first.col_offset, second.end_col_offset, f"{b}{between}{a}"


def _drop_call_sites(node: ast.Call, lines: list[str]) -> Iterator[Site]:
    """A call whose result is its input's transformation, dropped: `x.strip()` -> `x`, `abs(x)` -> `x`."""
    where = (node.lineno, node.col_offset, node.end_col_offset)
    func = node.func
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        return
    if isinstance(func, ast.Attribute) and not node.args and func.attr in _PURE_METHODS:
        yield "drop_call", *where, _segment(func.value, lines)
    elif isinstance(func, ast.Name) and func.id in _WRAPPERS and len(node.args) == 1:
        yield "drop_call", *where, _segment(node.args[0], lines)


def _constant_sites(node: ast.Constant, in_slice: bool) -> Iterator[Site]:
    value = node.value
    where = (node.lineno, node.col_offset, node.end_col_offset)
    if isinstance(value, bool):
        yield "change_constant", *where, str(not value)
    elif isinstance(value, int):
        kind = "off_by_one" if in_slice or value in (0, 1) else "change_constant"
        yield kind, *where, str(value + 1)
        if value > 0:
            yield kind, *where, str(value - 1)
    elif isinstance(value, float) and value:
        yield "change_constant", *where, repr(value * 2)


def _operator_site(left: ast.AST, right: ast.AST, lines: list[str], kind: str, new_op: str) -> Iterator[Site]:
    """The operator token between `left` and `right` (same line), replaced by `new_op`."""
    if left.end_lineno != right.lineno:
        return
    line = lines[left.end_lineno - 1]
    start, end = left.end_col_offset, right.col_offset
    match = _OPERATOR.search(line, start, end)
    if match:
        yield kind, left.end_lineno, match.start(), match.end(), new_op


def _parenthesised(text: str) -> bool:
    # `(a) - b`: swapping the operands' own spans would move one bracket and not the other
    return any(c in text for c in "()[]{}")


def _one_line(node: ast.AST) -> bool:
    return getattr(node, "lineno", None) is not None and node.lineno == node.end_lineno


def _segment(node: ast.AST, lines: list[str]) -> str:
    return lines[node.lineno - 1][node.col_offset : node.end_col_offset]
