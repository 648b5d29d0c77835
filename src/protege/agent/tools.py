"""The agent's tools (METHOD §1): bash, str_replace_editor, submit, ask_expert.

Semantics follow SWE-agent's tools (the editor lives in `editor.py`). `ToolBox.execute` runs one
tool call through the `Sandbox` protocol and returns a `ToolOutcome`. Every misuse (unknown tool,
missing/extra/mistyped argument, a path outside the work tree, a non-unique `old_str`, an
out-of-range line, ...) comes back as an observation the policy can read and act on; only a
failure of the sandbox itself (`SandboxError`) escapes, because then the episode cannot go on.

`submit` ends the episode with the sandbox's diff against base_commit, minus the files the task's
own test patch adds (those are the grader's, not the agent's); a diff over `patch_limit_bytes` raises
`PatchTooLarge` (the episode ends with that reason). `ask_expert` goes to the episode's
`Expert`; guidance comes back wrapped and with provenance `expert`, a refusal as a plain tool
observation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from protege import patches
from protege.agent.editor import EDITOR_COMMANDS, Editor, ToolError, resolve_path
from protege.agent.expert import observation as expert_observation
from protege.agent.protocols import Expert, PatchTooLarge, Sandbox
from protege.tasks import TaskInstance
from protege.trajectory import ExpertCall, Message, Provenance, ToolCall

__all__ = ["TOOL_SCHEMAS", "ToolBox", "ToolError", "ToolOutcome", "added_files", "drop_files", "resolve_path"]


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


# The tool schemas, in OpenAI function format (what chat templates and the OpenAI API take).
TOOL_SCHEMAS: list[dict[str, Any]] = [
    _function(
        "bash",
        "Run a bash command in the repository (the work dir). Each call is a fresh shell: `cd` and "
        "variables do not persist. Long-running or interactive commands are killed at the timeout.",
        {"command": {"type": "string", "description": "The bash command to run."}},
        ["command"],
    ),
    _function(
        "str_replace_editor",
        "View, create and edit files. `view` shows a file with line numbers (`view_range` [start, end], "
        "end -1 = to the end) or lists a directory 2 levels deep. `create` writes a new file (fails if it "
        "exists). `str_replace` replaces `old_str`, which must occur exactly once, by `new_str`. `insert` "
        "inserts `new_str` after line `insert_line` (0 = at the top). `undo_edit` reverts the last edit "
        "of a file. Paths are absolute (e.g. /testbed/x.py) or relative to the repository.",
        {
            "command": {
                "type": "string",
                "enum": list(EDITOR_COMMANDS),
                "description": "The editor command.",
            },
            "path": {"type": "string", "description": "File or directory path."},
            "view_range": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "view: [start_line, end_line], 1-based, end -1 = end of file.",
            },
            "file_text": {"type": "string", "description": "create: the content of the new file."},
            "old_str": {"type": "string", "description": "str_replace: the exact text to replace."},
            "new_str": {"type": "string", "description": "str_replace: the replacement; insert: the text."},
            "insert_line": {"type": "integer", "description": "insert: the line after which to insert."},
        },
        ["command", "path"],
    ),
    _function("submit", "Submit the current changes as your fix; ends the episode.", {}, []),
    _function(
        "ask_expert",
        "Ask a stronger expert model for guidance. It sees the issue, your most recent messages and "
        "your question. The number of questions per task is limited: ask when you are stuck.",
        {"question": {"type": "string", "description": "A precise question about what you need."}},
        ["question"],
    ),
]

SCHEMAS_BY_NAME = {schema["function"]["name"]: schema["function"]["parameters"] for schema in TOOL_SCHEMAS}


@dataclass
class ToolOutcome:
    """What one tool call produced."""

    observation: str
    """Text the policy reads (before the agent truncates it)."""
    provenance: Provenance = "tool"
    """`expert` when the observation carries expert guidance (never collapsed by the history processor)."""
    exit_code: int | None = None
    """bash exit code."""
    error: str = ""
    """The misuse message, when the call was rejected."""
    submitted: bool = False
    """The call was `submit`: the episode ends with `patch`."""
    patch: str = ""
    expert_call: ExpertCall | None = None
    duration_s: float = 0.0


# --------------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------------


def _type_ok(value: Any, spec: dict[str, Any]) -> bool:
    kind = spec.get("type")
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list) and all(_type_ok(v, spec.get("items", {})) for v in value)
    return True


def check_arguments(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments with nulls dropped, after checking names and types against the tool's schema."""
    schema = SCHEMAS_BY_NAME[tool]
    given = {k: v for k, v in arguments.items() if v is not None}
    unknown = sorted(set(given) - set(schema["properties"]))
    if unknown:
        known = ", ".join(schema["properties"]) or "none"
        raise ToolError(f"{tool}: unexpected argument(s) {', '.join(unknown)} (this tool takes: {known})")
    missing = [name for name in schema["required"] if name not in given]
    if missing:
        raise ToolError(f"{tool}: missing required argument(s) {', '.join(missing)}")
    for name, value in given.items():
        spec = schema["properties"][name]
        if not _type_ok(value, spec):
            expected = spec["type"] + (f" of {spec['items']['type']}s" if spec["type"] == "array" else "")
            raise ToolError(
                f"{tool}: argument `{name}` must be a {expected}, got {type(value).__name__} {value!r}"
            )
    return given


# --------------------------------------------------------------------------------------------------
# Patch helpers for submit
# --------------------------------------------------------------------------------------------------


def added_files(patch: str) -> set[str]:
    """Paths a unified diff creates."""
    return patches.added_files(patch)


def drop_files(diff: str, paths: set[str]) -> str:
    """`diff` without the per-file sections of `paths`."""
    return patches.without_files(diff, paths)


# --------------------------------------------------------------------------------------------------
# The tool box
# --------------------------------------------------------------------------------------------------


class ToolBox:
    """The tools of one episode, bound to its sandbox, task and expert."""

    def __init__(
        self,
        sandbox: Sandbox,
        task: TaskInstance,
        expert: Expert | None,
        command_timeout_s: float | None = None,
        patch_limit_bytes: int | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.task = task
        self.expert = expert
        self.command_timeout_s = command_timeout_s
        self.patch_limit_bytes = patch_limit_bytes
        self.editor = Editor(sandbox, command_timeout_s)

    def execute(self, call: ToolCall, history: list[Message], step: int) -> ToolOutcome:
        """Run one call; misuse becomes an observation with `error` set, SandboxError propagates."""
        started = time.monotonic()
        handlers = {
            "bash": self._bash,
            "str_replace_editor": lambda args: ToolOutcome(observation=self.editor.run(args)),
            "submit": self._submit,
            "ask_expert": lambda args: self._ask_expert(args, history, step),
        }
        handler = handlers.get(call.name)
        try:
            if handler is None:
                raise ToolError(f"unknown tool `{call.name}`; the tools are: {', '.join(handlers)}")
            if not isinstance(call.arguments, dict):
                raise ToolError(f"{call.name}: arguments must be a JSON object")
            outcome = handler(check_arguments(call.name, call.arguments))
        except ToolError as err:
            outcome = ToolOutcome(observation=str(err), error=str(err))
        outcome.duration_s = time.monotonic() - started
        return outcome

    def _bash(self, args: dict[str, Any]) -> ToolOutcome:
        command = args["command"]
        if not command.strip():
            raise ToolError("bash: `command` is empty")
        result = self.sandbox.run(command, timeout=self.command_timeout_s)
        text = result.output if result.output.strip() else "(no output)"
        if result.timed_out:
            text += f"\n[the command timed out after {self.command_timeout_s} s and was killed]"
        elif result.exit_code != 0:
            text += f"\n[exit code {result.exit_code}]"
        return ToolOutcome(observation=text, exit_code=result.exit_code)

    def _submit(self, args: dict[str, Any]) -> ToolOutcome:
        diff = self.sandbox.diff()
        size = len(diff.encode(errors="surrogateescape"))
        if self.patch_limit_bytes is not None and size > self.patch_limit_bytes:
            raise PatchTooLarge(
                f"the patch is {size} bytes, over sandbox.patch_limit_bytes={self.patch_limit_bytes}"
            )
        patch = drop_files(diff, added_files(self.task.test_patch))
        summary = (
            f"Submitted a patch of {patch.count(chr(10))} lines."
            if patch.strip()
            else "Submitted an empty patch."
        )
        return ToolOutcome(observation=summary, submitted=True, patch=patch)

    def _ask_expert(self, args: dict[str, Any], history: list[Message], step: int) -> ToolOutcome:
        question = args["question"]
        if not question.strip():
            raise ToolError("ask_expert: `question` is empty; ask a precise question")
        if self.expert is None:
            raise ToolError("ask_expert: no expert is available in this episode; continue on your own")
        call = self.expert.ask(question, history, self.task, step)
        provenance: Provenance = "expert" if call.status == "ok" else "tool"
        error = "" if call.status == "ok" else call.error
        return ToolOutcome(
            observation=expert_observation(call), provenance=provenance, error=error, expert_call=call
        )
