"""Mutations: each kind rewrites exactly one span of one line, inside function bodies only."""

from __future__ import annotations

import ast

import pytest

from protege.taskgen.mutate import KINDS, Mutation, mutations


def rewrites(body: str) -> set[tuple[str, str]]:
    """(kind, mutated line) of every mutation of a one-line function body."""
    source = f"def f(a, b, s, n, xs):\n    {body}\n"
    return {(m.kind, m.apply(source).splitlines()[1].strip()) for m in mutations("m.py", source)}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return a < b", {("flip_comparison", "return a >= b"), ("off_by_one", "return a <= b")}),
        ("return a in s", {("flip_comparison", "return a not in s")}),
        ("return a is None", {("flip_comparison", "return a is not None")}),
        ("return s[:n]", {("off_by_one", "return s[:n + 1]"), ("off_by_one", "return s[:n - 1]")}),
        ("return s[1:]", {("off_by_one", "return s[2:]"), ("off_by_one", "return s[0:]")}),
        ("return max(a, b)", {("swap_arguments", "return max(b, a)")}),
        ("return a - b", {("swap_arguments", "return b - a"), ("change_operator", "return a + b")}),
        ("return not a", {("drop_negation", "return a")}),
        (
            "return not (a or b)",
            {("drop_negation", "return (a or b)"), ("change_operator", "return not (a and b)")},
        ),
        ("return 7", {("change_constant", "return 8"), ("change_constant", "return 6")}),
        ("return True", {("change_constant", "return False")}),
        ("return s.strip()", {("drop_call", "return s")}),
        ("return sorted(xs)", {("drop_call", "return xs")}),
        ("return s.split(a)", set()),
    ],
)
def test_each_kind_rewrites_one_span(body: str, expected: set[tuple[str, str]]) -> None:
    assert rewrites(body) == expected


def test_every_kind_is_produced_on_a_realistic_function() -> None:
    source = (
        "def window(xs, n, strict=False):\n"
        '    """Docstring 1 < 2 is never touched."""\n'
        "    if not xs or n < 1:\n"
        "        return []\n"
        "    return [abs(max(xs[i], 0)) - 5 for i in range(len(xs) - n)] if strict else xs[:n]\n"
    )
    found = mutations("w.py", source)
    assert {m.kind for m in found} == set(KINDS)
    for mutation in found:
        mutated = mutation.apply(source)
        assert ast.dump(ast.parse(mutated)) != ast.dump(ast.parse(source)), mutation.describe()
        changed = [
            i
            for i, (a, b) in enumerate(zip(source.splitlines(), mutated.splitlines(), strict=True))
            if a != b
        ]
        assert changed == [mutation.line - 1], mutation.describe()
    assert all(m.line != 2 for m in found), "the docstring was mutated"


def test_only_function_bodies_are_mutated() -> None:
    source = (
        "LIMIT = 3 < 4\n"
        "@decorate(1, 2)\n"
        "def f(x=1):\n"
        "    return f'{x + 1}'\n"
        "class C:\n"
        "    size = 2\n"
        "    def m(self):\n"
        "        return self.size > 2\n"
    )
    found = mutations("c.py", source)
    assert found and all(m.line == 8 and m.function == "C.m" for m in found)


def test_a_mutation_refuses_a_source_it_does_not_fit() -> None:
    mutation = Mutation("m.py", "f", "flip_comparison", 1, 9, 10, "<", ">=")
    with pytest.raises(ValueError, match="expected '<'"):
        mutation.apply("x = a == b\n")


def test_unparsable_files_give_no_mutations() -> None:
    assert mutations("broken.py", "def f(:\n") == []
