"""Unified diffs, read with `unidiff` (the parser swebench itself depends on): the files a patch touches,
creates or modifies, its hunks with their changed lines, and the same patch without some files.

Every place that looks inside a patch (the teacher and the oracle expert reading the gold patch, the
submit tool dropping files, the reward's patch similarity, the demo's eval scripts) goes through here, so
a header line that merely looks like a file header (a removed line `-- x`) is never misread: hunk bodies
are read by their `@@` line counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from unidiff import PatchedFile, PatchSet, UnidiffParseError


class PatchError(ValueError):
    """Text that is not a unified diff unidiff can read; the message says where it stopped."""


def parse(patch: str) -> PatchSet:
    """The files of a unified (git) diff; PatchError when the text cannot be read as one."""
    try:
        return PatchSet(patch)
    except UnidiffParseError as err:
        raise PatchError(f"not a readable unified diff: {err}") from None


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
