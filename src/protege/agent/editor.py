"""`str_replace_editor`: SWE-agent's file viewer and editor, through the Sandbox protocol.

`view` prints a file `cat -n` style (optionally a `view_range` [start, end], end -1 = to the end) or
lists a directory two levels deep without hidden items; `create` writes a new file (never over an
existing one); `str_replace` replaces `old_str`, which must occur exactly once, and shows a snippet;
`insert` puts `new_str` after line `insert_line` (0 = at the top); `undo_edit` reverts the last
create/str_replace/insert of a file in this episode (undoing a create removes the file).
Every misuse raises `ToolError`, whose message is the observation the policy reads.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import Any

from protege.agent.protocols import Sandbox

SNIPPET_LINES = 4
"""Lines of context shown around an edit (SWE-agent's value)."""

EDITOR_COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")

# Which arguments each editor command takes (required, optional), beyond `command`.
EDITOR_ARGUMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "view": (("path",), ("view_range",)),
    "create": (("path", "file_text"), ()),
    "str_replace": (("path", "old_str"), ("new_str",)),
    "insert": (("path", "insert_line", "new_str"), ()),
    "undo_edit": (("path",), ()),
}


class ToolError(Exception):
    """A misuse of a tool; the message is the observation the policy reads."""


def resolve_path(path: str, workdir: str) -> str:
    """Absolute normalised path inside the sandbox; refuses anything outside `workdir`."""
    if not path.strip():
        raise ToolError("str_replace_editor: `path` is empty")
    joined = path if path.startswith("/") else posixpath.join(workdir, path)
    resolved = posixpath.normpath(joined)
    root = posixpath.normpath(workdir)
    if resolved != root and not resolved.startswith(root + "/"):
        raise ToolError(
            f"str_replace_editor: path {path} is outside the repository {root}; use a path under it"
        )
    return resolved


def file_lines(text: str) -> list[str]:
    """The lines of a file as `cat -n` counts them (a final newline does not start another line)."""
    if not text:
        return []
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def _join_lines(lines: list[str], like: str) -> str:
    """Lines back to text, with a final newline when the original had one (or was empty)."""
    return "\n".join(lines) + ("\n" if like.endswith("\n") or not like else "")


def numbered(lines: list[str], first: int = 1) -> str:
    """`cat -n` style: right-aligned line numbers, a tab, the line."""
    return "\n".join(f"{number:6}\t{line}" for number, line in enumerate(lines, first))


def _snippet(text: str, center_start: int, center_end: int) -> str:
    lines = file_lines(text)
    start = max(0, center_start - SNIPPET_LINES)
    end = min(len(lines), center_end + SNIPPET_LINES)
    return numbered(lines[start:end], start + 1)


def _edited(path: str, text: str, first_line: int, last_line: int) -> str:
    return (
        f"The file {path} has been edited. Here's the result of running `cat -n` on a snippet of {path}:\n"
        f"{_snippet(text, first_line, last_line)}\n"
        "Review the changes and make sure they are as expected. Edit the file again if necessary."
    )


class Editor:
    """The editor of one episode, bound to its sandbox; holds the per-file undo history."""

    def __init__(self, sandbox: Sandbox, timeout_s: float | None = None) -> None:
        self.sandbox = sandbox
        self.workdir = sandbox.workdir
        self.timeout_s = timeout_s
        self._history: dict[str, list[str | None]] = {}

    def run(self, args: dict[str, Any]) -> str:
        """Run one editor call (arguments already type-checked); the observation, or ToolError."""
        command = args.pop("command")
        if command not in EDITOR_ARGUMENTS:
            raise ToolError(
                f"str_replace_editor: unknown command `{command}`; use one of {', '.join(EDITOR_COMMANDS)}"
            )
        required, optional = EDITOR_ARGUMENTS[command]
        missing = [name for name in required if name not in args]
        if missing:
            raise ToolError(
                f"str_replace_editor {command}: missing required argument(s) {', '.join(missing)}"
            )
        extra = sorted(set(args) - set(required) - set(optional))
        if extra:
            raise ToolError(
                f"str_replace_editor {command}: argument(s) {', '.join(extra)} not used by `{command}`"
            )
        path = resolve_path(args.pop("path"), self.workdir)
        handlers = {
            "view": self._view,
            "create": self._create,
            "str_replace": self._str_replace,
            "insert": self._insert,
            "undo_edit": self._undo,
        }
        return handlers[command](path, **args)

    def _kind(self, path: str) -> str:
        quoted = shlex.quote(path)
        probe = (
            f"if [ -d {quoted} ]; then echo dir; elif [ -f {quoted} ]; then echo file; "
            f"elif [ -e {quoted} ]; then echo other; else echo missing; fi"
        )
        return self.sandbox.run(probe, timeout=self.timeout_s).output.strip()

    def _read(self, path: str, kind: str = "") -> str:
        kind = kind or self._kind(path)
        if kind == "missing":
            raise ToolError(f"str_replace_editor: the path {path} does not exist")
        if kind != "file":
            raise ToolError(
                f"str_replace_editor: the path {path} is a {'directory' if kind == 'dir' else kind}"
            )
        try:
            return self.sandbox.read_file(path)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ToolError(f"str_replace_editor: cannot read {path}: {err}") from None

    def _write(self, path: str, text: str) -> None:
        try:
            self.sandbox.write_file(path, text)
        except (OSError, ValueError) as err:
            raise ToolError(f"str_replace_editor: cannot write {path}: {err}") from None

    def _view(self, path: str, view_range: list[int] | None = None) -> str:
        kind = self._kind(path)
        if kind == "dir":
            if view_range is not None:
                raise ToolError(
                    "str_replace_editor view: `view_range` is not allowed when `path` is a directory"
                )
            quoted = shlex.quote(path)
            listing = self.sandbox.run(
                f"find {quoted} -mindepth 1 -maxdepth 2 -name '.*' -prune -o -print | sort",
                timeout=self.timeout_s,
            ).output
            return f"Here's the files and directories up to 2 levels deep in {path}, excluding hidden items:\n{listing.rstrip()}"
        lines = file_lines(self._read(path, kind))
        if view_range is None:
            return f"Here's the result of running `cat -n` on {path}:\n{numbered(lines)}"
        if len(view_range) != 2:
            raise ToolError(
                "str_replace_editor view: `view_range` must be a list of two integers [start, end]"
            )
        start, end = view_range
        if not 1 <= start <= len(lines):
            raise ToolError(
                f"str_replace_editor view: invalid `view_range` {view_range}: start {start} must be within "
                f"the file's lines [1, {len(lines)}]"
            )
        if end != -1 and not start <= end <= len(lines):
            raise ToolError(
                f"str_replace_editor view: invalid `view_range` {view_range}: end {end} must be -1 or within "
                f"[{start}, {len(lines)}]"
            )
        shown = lines[start - 1 :] if end == -1 else lines[start - 1 : end]
        return f"Here's the result of running `cat -n` on {path}:\n{numbered(shown, start)}"

    def _create(self, path: str, file_text: str) -> str:
        quoted = shlex.quote(path)
        parent = shlex.quote(posixpath.dirname(path))
        answer = self.sandbox.run(
            f"if [ -e {quoted} ]; then echo exists; else mkdir -p {parent} && echo ok; fi",
            timeout=self.timeout_s,
        ).output.strip()
        if answer == "exists":
            raise ToolError(
                f"str_replace_editor create: file already exists at {path}; "
                "use `str_replace` or `insert` to change it"
            )
        if answer != "ok":
            raise ToolError(
                f"str_replace_editor create: cannot create the parent directory of {path}: {answer}"
            )
        self._write(path, file_text)
        self._history.setdefault(path, []).append(None)
        return f"File created successfully at: {path}"

    def _str_replace(self, path: str, old_str: str, new_str: str = "") -> str:
        text = self._read(path)
        if not old_str:
            raise ToolError(
                "str_replace_editor str_replace: `old_str` is empty; give the exact text to replace"
            )
        count = text.count(old_str)
        if count == 0:
            raise ToolError(
                f"No replacement was performed, old_str `{old_str}` did not appear verbatim in {path}."
            )
        if count > 1:
            lines = sorted({text[: m.start()].count("\n") + 1 for m in re.finditer(re.escape(old_str), text)})
            raise ToolError(
                f"No replacement was performed. Multiple occurrences of old_str `{old_str}` in lines {lines}. "
                "Please ensure it is unique."
            )
        first = text[: text.index(old_str)].count("\n")
        updated = text.replace(old_str, new_str)
        self._write(path, updated)
        self._history.setdefault(path, []).append(text)
        return _edited(path, updated, first, first + new_str.count("\n") + 1)

    def _insert(self, path: str, insert_line: int, new_str: str) -> str:
        text = self._read(path)
        lines = file_lines(text)
        if not 0 <= insert_line <= len(lines):
            raise ToolError(
                f"str_replace_editor insert: invalid `insert_line` {insert_line}: it must be within the "
                f"file's lines [0, {len(lines)}]"
            )
        new_lines = new_str.split("\n")
        updated = _join_lines(lines[:insert_line] + new_lines + lines[insert_line:], text)
        self._write(path, updated)
        self._history.setdefault(path, []).append(text)
        return _edited(path, updated, insert_line, insert_line + len(new_lines))

    def _undo(self, path: str) -> str:
        edits = self._history.get(path)
        if not edits:
            raise ToolError(f"str_replace_editor undo_edit: no edit history for {path}")
        previous = edits.pop()
        if previous is None:
            self.sandbox.run(f"rm -f {shlex.quote(path)}", timeout=self.timeout_s)
            return f"Last edit to {path} undone: the file it created was removed."
        self._write(path, previous)
        return (
            f"Last edit to {path} undone successfully. Here's the result of running `cat -n` on {path}:\n"
            + (numbered(file_lines(previous)))
        )
