"""`str_replace_editor`: SWE-agent's file viewer and editor, through the Sandbox protocol.

`view` prints a file `cat -n` style (optionally a `view_range` [start, end], end -1 = to the end) or
lists a directory two levels deep without hidden items; `create` writes a new file (never over an
existing one); `str_replace` replaces `old_str`, which must occur exactly once, and shows a snippet;
`insert` puts `new_str` after line `insert_line` (0 = at the top); `undo_edit` reverts the last
create/str_replace/insert of a file in this episode (undoing a create removes the file).
Every misuse raises `ToolError`, whose message is the observation the policy reads.

Each command is one round trip to the sandbox: `view` is `Sandbox.read_path` (a file's text or a
directory's listing), `create` an exclusive `write_file`, `str_replace` and `insert` one `edit_file` (the
sandbox applies `shell_server.apply_edit` and sends back the text before, from which the observation and
the undo history are made), `undo_edit` one write or remove.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import Any

from protege.agent.protocols import Sandbox
from protege.agent.sandbox.shell_server import file_lines, join_lines

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


def _refusing(path: str, verb: str, operation: Any) -> Any:
    """operation(), its file errors turned into the observations the policy reads."""
    try:
        return operation()
    except FileNotFoundError:
        raise ToolError(f"str_replace_editor: the path {path} does not exist") from None
    except IsADirectoryError:
        raise ToolError(f"str_replace_editor: the path {path} is a directory") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ToolError(f"str_replace_editor: cannot {verb} {path}: {err}") from None


def _written(path: str, applied: bool) -> None:
    if not applied:  # the sandbox and this editor disagree on whether the edit applies: a bug, said so
        raise ToolError(f"str_replace_editor: the edit of {path} was not written (internal error)")


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

    def _view(self, path: str, view_range: list[int] | None = None) -> str:
        kind, text = _refusing(path, "read", lambda: self.sandbox.read_path(path))
        if kind == "dir":
            if view_range is not None:
                raise ToolError(
                    "str_replace_editor view: `view_range` is not allowed when `path` is a directory"
                )
            return f"Here's the files and directories up to 2 levels deep in {path}, excluding hidden items:\n{text.rstrip()}"
        lines = file_lines(text)
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
        try:
            self.sandbox.write_file(path, file_text, exclusive=True)
        except FileExistsError:
            raise ToolError(
                f"str_replace_editor create: file already exists at {path}; "
                "use `str_replace` or `insert` to change it"
            ) from None
        except (OSError, ValueError) as err:
            raise ToolError(f"str_replace_editor create: cannot create {path}: {err}") from None
        self._history.setdefault(path, []).append(None)
        return f"File created successfully at: {path}"

    def _edit(self, path: str, old: str | None, new: str, line: int | None) -> tuple[str, bool]:
        return _refusing(path, "edit", lambda: self.sandbox.edit_file(path, old, new, line))

    def _str_replace(self, path: str, old_str: str, new_str: str = "") -> str:
        if not old_str:
            self._edit(path, None, "", None)  # a missing file or a directory is the first thing to say
            raise ToolError(
                "str_replace_editor str_replace: `old_str` is empty; give the exact text to replace"
            )
        text, applied = self._edit(path, old_str, new_str, None)
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
        _written(path, applied)
        first = text[: text.index(old_str)].count("\n")
        self._history.setdefault(path, []).append(text)
        return _edited(path, text.replace(old_str, new_str), first, first + new_str.count("\n") + 1)

    def _insert(self, path: str, insert_line: int, new_str: str) -> str:
        text, applied = self._edit(path, None, new_str, insert_line)
        lines = file_lines(text)
        if not 0 <= insert_line <= len(lines):
            raise ToolError(
                f"str_replace_editor insert: invalid `insert_line` {insert_line}: it must be within the "
                f"file's lines [0, {len(lines)}]"
            )
        _written(path, applied)
        new_lines = new_str.split("\n")
        updated = join_lines(lines[:insert_line] + new_lines + lines[insert_line:], text)
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
        try:
            self.sandbox.write_file(path, previous)
        except (OSError, ValueError) as err:
            raise ToolError(f"str_replace_editor: cannot write {path}: {err}") from None
        return (
            f"Last edit to {path} undone successfully. Here's the result of running `cat -n` on {path}:\n"
            + (numbered(file_lines(previous)))
        )
