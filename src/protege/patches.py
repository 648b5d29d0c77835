"""Unified diffs, read with `unidiff` (the parser swebench itself depends on): the files a patch touches,
creates or modifies, its hunks with their changed lines, the same patch without some files, and the patch
that undoes it.

Every place that looks inside a patch (the teacher and the oracle expert reading the gold patch, the
submit tool dropping files, the reward's patch similarity, the demo's eval scripts) goes through here, so
a header line that merely looks like a file header (a removed line `-- x`) is never misread: hunk bodies
are read by their `@@` line counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from unidiff import PatchedFile, PatchSet, UnidiffParseError


class PatchError(ValueError):
    """Text that is not a unified diff unidiff can read; the message says where it stopped."""


def parse(patch: str) -> PatchSet:
    """The files of a unified (git) diff; PatchError when the text cannot be read as one. Hunk headers
    whose line counts disagree with their bodies (hand-written diffs) are recounted first, as
    `git apply --recount` does."""
    try:
        return PatchSet(patch)
    except UnidiffParseError:
        pass
    try:
        return PatchSet(recount(patch))
    except UnidiffParseError as err:
        raise PatchError(f"not a readable unified diff: {err}") from None


_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$")
_FILE_START = ("diff --git ", "--- ", "+++ ")


def recount(patch: str) -> str:
    """The diff with each hunk header's line counts taken from its body (context, `-`, `+` lines up to
    the next hunk or file header)."""
    lines = patch.splitlines(keepends=True)
    out: list[str] = []
    index = 0
    while index < len(lines):
        header = _HUNK_HEADER.match(lines[index].rstrip("\r\n"))
        if header is None:
            out.append(lines[index])
            index += 1
            continue
        body_end = index + 1
        while body_end < len(lines) and not lines[body_end].startswith(("@@ ", *_FILE_START)):
            body_end += 1
        body = lines[index + 1 : body_end]
        old = sum(1 for line in body if line[:1] in (" ", "-") or line in ("\n", "\r\n"))
        new = sum(1 for line in body if line[:1] in (" ", "+") or line in ("\n", "\r\n"))
        out.append(f"@@ -{header[1]},{old} +{header[2]},{new} @@{header[3]}\n")
        out.extend(body)
        index = body_end
    return "".join(out)


def touched_files(patch: str) -> list[str]:
    """Paths the diff touches (post-image names; a deleted file's own name), in order of appearance."""
    return [changed.path for changed in parse(patch)]


def added_files(patch: str) -> set[str]:
    """Paths the diff creates."""
    return {changed.path for changed in parse(patch) if changed.is_added_file}


def modified_files(patch: str) -> list[str]:
    """Paths the diff changes that exist before it (not created): what `git checkout <base> --` restores."""
    return [changed.path for changed in parse(patch) if not changed.is_added_file]


def without_files(patch: str, paths: Iterable[str]) -> str:
    """The diff without the sections of `paths`; the diff itself, byte for byte, when none of them is in it."""
    drop = set(paths)
    files = parse(patch)
    if not drop & {changed.path for changed in files}:
        return patch
    return "".join(str(changed) for changed in files if changed.path not in drop)


_DEF = re.compile(r"^(\s*)(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)")


def hunk_scope(hunk: Any) -> str:
    """The `def`/`class` a hunk's first change is in ('' at module level): the innermost one among the
    context lines before the change that encloses it (indented less than the changed line), else the one git
    named in the `@@` header. A `def` in the context whose body ends before the change (a nested helper
    above the changed line) is not the scope."""
    defs: list[tuple[int, str]] = []
    for line in hunk:
        text = line.value.rstrip("\n")
        if line.line_type in "+-":
            indent = len(text) - len(text.lstrip())
            enclosing = [name for depth, name in defs if depth < indent]
            if enclosing:
                return enclosing[-1]
            break
        if line.line_type == " " and (match := _DEF.match(text)):
            defs.append((len(match.group(1)), match.group(2)))
    header = _DEF.match(hunk.section_header)
    return header.group(2) if header else ""


def changed_lines(changed: PatchedFile) -> list[tuple[str, str]]:
    """(sign, text) of each added or removed line of one file, in order, without line endings."""
    return [
        (line.line_type, line.value.rstrip("\n"))
        for hunk in changed
        for line in hunk
        if line.is_added or line.is_removed
    ]


def added_runs(patch: str) -> list[list[str]]:
    """Runs of consecutive added lines (each run ends at any other line or at a hunk's end)."""
    runs: list[list[str]] = []
    for changed in parse(patch):
        for hunk in changed:
            run: list[str] = []
            for line in hunk:
                if line.is_added:
                    run.append(line.value.rstrip("\n"))
                elif run:
                    runs.append(run)
                    run = []
            if run:
                runs.append(run)
    return runs


_SWAPPED_HEADERS = (
    ("new file mode ", "deleted file mode "),
    ("rename from ", "rename to "),
    ("copy from ", "copy to "),
    ("old mode ", "new mode "),
)


def _reversed_header(line: str) -> str:
    """One extended git header line of the reversed patch (`diff --git`, modes, renames, `index`)."""
    if line.startswith("diff --git a/") and " b/" in line:
        old, new = line.removeprefix("diff --git a/").rstrip("\n").split(" b/", 1)
        return f"diff --git a/{new} b/{old}\n"
    for one, other in _SWAPPED_HEADERS:
        if line.startswith(one):
            return other + line[len(one) :]
        if line.startswith(other):
            return one + line[len(other) :]
    if line.startswith("index ") and ".." in line:
        ids, _, mode = line[6:].rstrip("\n").partition(" ")
        old, _, new = ids.partition("..")
        return f"index {new}..{old}" + (f" {mode}" if mode else "") + "\n"
    return line


def _span(start: int, length: int) -> str:
    """A hunk range as git writes it: the length is left out when it is 1."""
    return f"{start}" if length == 1 else f"{start},{length}"


def _reversed_side(name: str, prefix: str) -> str:
    return name if name == "/dev/null" else prefix + name.split("/", 1)[-1]


def reversed_patch(patch: str) -> str:
    """The diff that undoes `patch` (what `git apply --reverse` applies), as text; PatchError for a binary one.

    Each hunk's `+` and `-` lines swap, the `@@` ranges swap, the file headers swap sides (a created file
    becomes a deleted one); within a run of changed lines the removals come first, as git writes them, and a
    `\\ No newline at end of file` marker moves with the line it belongs to.
    """
    out: list[str] = []
    for changed in parse(patch):
        if changed.is_binary_file:
            raise PatchError(f"{changed.path}: a binary patch cannot be reversed as text")
        out += [_reversed_header(line) for line in changed.patch_info]
        out.append(f"--- {_reversed_side(changed.target_file, 'a/')}\n")
        out.append(f"+++ {_reversed_side(changed.source_file, 'b/')}\n")
        for hunk in changed:
            header = f" {hunk.section_header}" if hunk.section_header else ""
            ranges = f"-{_span(hunk.target_start, hunk.target_length)} +{_span(hunk.source_start, hunk.source_length)}"
            out.append(f"@@ {ranges} @@{header}\n")
            removed: list[str] = []
            added: list[str] = []
            last: list[str] = out
            for line in hunk:
                if line.line_type == "\\":
                    last[-1] += "\\" + line.value
                    continue
                if line.is_added or line.is_removed:
                    last = removed if line.is_added else added
                    last.append(("-" if line.is_added else "+") + line.value)
                    continue
                out += removed + added
                removed.clear()
                added.clear()
                last = out
                out.append(" " + line.value)
            out += removed + added
    return "".join(out)
