"""The agent's seams, as Protocols: sandbox, policy, expert. Implementations live beside them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from protege.tasks import TaskInstance
from protege.trajectory import ExpertCall, Message, ToolCall


@dataclass
class CommandResult:
    """Result of one command run in a sandbox."""

    output: str
    """stdout and stderr interleaved, truncated to the sandbox's output limit."""
    exit_code: int
    """Process exit code (124 or -9 style codes when killed at the timeout)."""
    truncated: bool = False
    """Output was cut; the output ends with a marker saying how much."""
    timed_out: bool = False
    """The command hit its timeout and its whole process group was killed."""
    duration_s: float = 0.0
    """Wall time."""


class SandboxError(RuntimeError):
    """The sandbox itself failed (could not start, died); the episode ends as sandbox_error."""


class PatchTooLarge(Exception):
    """The work tree's diff is over `sandbox.patch_limit_bytes`; the episode ends as `patch_too_large`."""


class Sandbox(Protocol):
    """A task's repository at base_commit in an isolated environment."""

    workdir: str
    """Path of the repository inside the sandbox."""

    def run(self, command: str, timeout: float | None = None) -> CommandResult: ...

    def read_file(self, path: str) -> str:
        """A file's text (relative to workdir); FileNotFoundError, IsADirectoryError, OSError naming the path."""
        ...

    def read_path(self, path: str) -> tuple[str, str]:
        """("file", its text) or ("dir", its listing two levels deep without hidden entries); errors as read_file."""
        ...

    def write_file(self, path: str, content: str, exclusive: bool = False) -> None:
        """Create or replace a file, parents created; FileExistsError when `exclusive` and it exists."""
        ...

    def edit_file(self, path: str, old: str | None, new: str, line: int | None) -> tuple[str, bool]:
        """Apply `shell_server.apply_edit(text, old, new, line)` to the file and write the result back when
        the edit applies: (the text before, whether it was written). Errors as read_file."""
        ...

    def diff(self) -> str:
        """`git diff` of the work tree against base_commit (new files included)."""
        ...

    def close(self) -> None: ...


@dataclass
class PolicyTurn:
    """One generated assistant turn."""

    text: str
    """The raw text (for chat-template backends: the decoded completion)."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    """Parsed tool calls (empty + format_error set when unparsable)."""
    format_error: str = ""
    """Why the turn could not be parsed into exactly one tool call, if it could not."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    token_ids: list[int] | None = None
    """Exact generated ids (transformers/vLLM backends), for RL."""
    prompt_ids: list[int] | None = None
    """Exact prompt ids the turn was generated from (transformers/vLLM backends), for RL."""
    logprobs: list[float] | None = None


class Policy(Protocol):
    """The decision maker: maps the visible history to the next assistant turn."""

    name: str
    """Backend name recorded in trajectories."""
    model: str
    """Model id or path recorded in trajectories."""

    def generate(self, messages: list[Message], tools: list[dict[str, Any]]) -> PolicyTurn: ...


class Expert(Protocol):
    """The strong model behind ask_expert, for one episode (holds the quota)."""

    backend: str
    model: str

    def ask(self, question: str, history: list[Message], task: TaskInstance, step: int) -> ExpertCall:
        """Answer a question; never raises for API trouble: the ExpertCall's status/error say what happened."""
        ...
