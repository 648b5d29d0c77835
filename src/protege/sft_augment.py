"""Renamed copies of SFT trajectories: the same episode with the repository's own names replaced, consistently.

A small student trained on a few hundred trajectories can lower its loss by recalling them: the path it viewed,
the symbol it grepped, the line it edited, all strings of its training set. On held-out tasks it then types
those strings instead of the ones in front of it (issue 16's learning run: `git grep` symbols taken from the
task 0/80, editor paths inside the task's package 3/77). A renamed copy keeps every step of the episode and
replaces the names the episode is about (its package and module names, the functions and classes it reads, the
symbols it searches for) with fresh ones, in every message and every tool-call argument alike. The only way to
predict a renamed name in a policy turn is then to copy it from the task or an earlier observation, which is
what the student must do on a task it has never seen.

Renaming is consistent within a copy (a name maps to one fresh name everywhere, so the episode still holds
together) and whole-word, where a word ends at anything but a letter or digit: renaming `ranges` renames the
`ranges` in `test_ranges` too. Fresh names are made of word pieces seen in the dataset's own observations, so
they tokenize like code, never collide with a word of the episode, and keep the original's shape (leading
underscores, snake_case parts, CamelCase). Deterministic: the same records, copies and seed give the same data.
"""

from __future__ import annotations

import builtins
import copy
import hashlib
import keyword
import random
import re
from typing import Any

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PIECE = re.compile(r"(?<![A-Za-z])[a-z]{3,10}(?![A-Za-z])")
_DEF = re.compile(r"^\s*(?:\d+\t)?\s*(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)", re.MULTILINE)
_GREP = re.compile(r"\bgrep\b.*?\s-n\s+(?:-\w+\s+)*['\"]?([A-Za-z_]\w*)")
_NAME_PART = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
"""snake_case and CamelCase parts of a name."""
MIN_NAME_CHARS = 3
"""Shorter names (`i`, `db`) are left alone: too often a piece of unrelated words."""
KEEP = frozenset(
    {
        *keyword.kwlist,
        *keyword.softkwlist,
        *dir(builtins),
        "self",
        "cls",
        "tests",
        "test",
        "testbed",
        "src",
        "py",
    }
)
"""Never renamed: Python's own words and the scaffold's fixed paths."""


def _texts(record: dict[str, Any]) -> list[str]:
    """Every text of the record: message contents and tool-call argument strings."""
    texts = []
    for message in record["messages"]:
        texts.append(message.get("content") or "")
        for call in message.get("tool_calls") or []:
            texts.extend(_strings(call.get("function", {}).get("arguments")))
    return texts


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def episode_names(record: dict[str, Any]) -> list[str]:
    """The names an episode is about: path components of the files its tool calls name, the symbols it greps
    for, and the functions and classes defined in what it was shown. Sorted, longest first."""
    names: set[str] = set()
    system = " ".join(m.get("content") or "" for m in record["messages"] if m.get("role") == "system")
    scaffold = set(_WORD.findall(system))
    for message in record["messages"]:
        if message.get("role") == "system":
            continue
        names.update(_DEF.findall(message.get("content") or ""))
        for call in message.get("tool_calls") or []:
            arguments = call.get("function", {}).get("arguments") or {}
            if isinstance(arguments, dict):
                path = arguments.get("path")
                if isinstance(path, str):
                    names.update(part.removesuffix(".py") for part in _WORD.findall(path))
                command = arguments.get("command")
                if isinstance(command, str):
                    names.update(_GREP.findall(command))
    keep = {n for n in names if len(n.strip("_")) < MIN_NAME_CHARS or n.startswith("__") or n in KEEP}
    return sorted(names - keep - scaffold, key=lambda n: (-len(n), n))


def word_pieces(records: list[dict[str, Any]]) -> list[str]:
    """Lower-case word pieces (3 to 10 letters) of the dataset's observations: what fresh names are made of."""
    pieces: set[str] = set()
    for record in records:
        for message in record["messages"]:
            if message.get("role") == "tool":
                pieces.update(_PIECE.findall(message.get("content") or ""))
    return sorted(pieces - KEEP)


def _fresh_name(name: str, pieces: list[str], rng: random.Random) -> str:
    """A name shaped like `name` (leading underscores, snake_case parts or CamelCase) made of random pieces."""
    core = name.lstrip("_")
    lead = name[: len(name) - len(core)]
    if core.startswith("test_") and len(core) > len("test_"):  # pytest finds tests by this prefix
        lead, core = lead + "test_", core[len("test_") :]
    if core[:1].isupper() and "_" not in core:
        parts = _NAME_PART.findall(core) or [core]
        return lead + "".join(rng.choice(pieces).capitalize() for _ in parts)
    parts = [p for p in core.split("_") if p] or [core]
    fresh = "_".join(rng.choice(pieces) for _ in parts)
    return lead + (fresh.upper() if core.isupper() else fresh)


def rename_map(record: dict[str, Any], pieces: list[str], rng: random.Random) -> dict[str, str]:
    """Each of the episode's names to a fresh one that is no word of the episode and no other fresh name, made
    of pieces that are no part of a renamed name (else `week_end` could become `end_weeks`, where `weeks` was
    renamed too)."""
    taken = {w for text in _texts(record) for w in _WORD.findall(text)}
    names = episode_names(record)
    parts = {part.lower() for name in names for part in _NAME_PART.findall(name)}
    usable = [piece for piece in pieces if piece not in parts]
    mapping: dict[str, str] = {}
    for name in names:
        for _ in range(100):
            fresh = _fresh_name(name, usable, rng)
            if fresh not in taken and fresh not in mapping.values() and fresh != name:
                mapping[name] = fresh
                break
    return mapping


def apply_renames(record: dict[str, Any], mapping: dict[str, str], suffix: str) -> dict[str, Any]:
    """A deep copy of `record` with every whole-word occurrence of a mapped name replaced (system prompt and
    tool schemas untouched) and `suffix` appended to its id."""
    renamed = copy.deepcopy(record)
    renamed["id"] = f"{record['id']}{suffix}"
    if not mapping:
        return renamed
    pattern = re.compile(
        r"(?<![A-Za-z0-9])("
        + "|".join(map(re.escape, sorted(mapping, key=len, reverse=True)))
        + r")(?![A-Za-z0-9])"
    )

    def rename(value: Any) -> Any:
        if isinstance(value, str):
            return pattern.sub(lambda m: mapping[m.group(1)], value)
        if isinstance(value, dict):
            return {k: rename(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rename(v) for v in value]
        return value

    for message in renamed["messages"]:
        if message.get("role") == "system":
            continue
        if isinstance(message.get("content"), str):
            message["content"] = rename(message["content"])
        for call in message.get("tool_calls") or []:
            function = call.get("function", {})
            function["arguments"] = rename(function.get("arguments"))
    return renamed


def with_renamed_copies(records: list[dict[str, Any]], copies: int, seed: int) -> list[dict[str, Any]]:
    """`records`, each followed by `copies` renamed copies (ids `<id>~r1`, `<id>~r2`, ...); `copies == 0` returns
    `records` itself. Each copy's names come from a generator seeded by (seed, record id, copy)."""
    if copies <= 0:
        return records
    pieces = word_pieces(records)
    out = []
    for record in records:
        out.append(record)
        for k in range(1, copies + 1):
            key = hashlib.sha256(f"{seed}\0{record['id']}\0{k}".encode()).digest()
            rng = random.Random(int.from_bytes(key[:8], "big"))
            out.append(apply_renames(record, rename_map(record, pieces, rng), f"~r{k}"))
    return out
