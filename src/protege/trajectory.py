"""The one trajectory format: what synthesis writes, SFT reads, RL rollouts produce and eval reports on.

One JSON record per episode (JSONL files hold many). `format_version` is checked on read: a reader
meeting an unknown version refuses with a message naming the file/line and the versions it knows.
Expert calls are first-class fields (METHOD lesson 7): their counters are the method's headline metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION = 2
KNOWN_VERSIONS = (1, 2)
# Version history: 2 added ExpertCall.forced (scaffold-forced calls, issue 19); a v1 record reads as v2
# with every call unforced.

# Who produced a message. Only `policy` messages are ever training targets.
Provenance = Literal["system", "task", "policy", "tool", "expert"]

# Every way an episode ends (issue 3). `running` only while in flight.
Status = Literal[
    "running",
    "submitted",
    "step_limit",
    "cost_limit",
    "context_overflow",
    "format_errors",
    "sandbox_error",
    "patch_too_large",
    "timeout",
    "budget_exhausted",
    "policy_error",
]


class TrajectoryFormatError(ValueError):
    """A trajectory file or record cannot be read (unknown version, bad JSON, bad field)."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ToolCall(Record):
    """A tool call as the policy emitted it."""

    id: str
    """Call id (the backend's, or generated)."""
    name: str
    """Tool name: bash, str_replace_editor, submit, ask_expert."""
    arguments: dict[str, Any]
    """Parsed arguments."""


class Message(Record):
    """One chat message with its provenance."""

    role: Literal["system", "user", "assistant", "tool"]
    """Chat role as the policy's template sees it."""
    provenance: Provenance
    """Who produced it; expert guidance is a tool message with provenance `expert`."""
    content: str
    """Text (for assistant turns: the reasoning text, tool calls live in tool_calls)."""
    tool_calls: list[ToolCall] = []
    """Tool calls of an assistant turn."""
    tool_call_id: str = ""
    """For tool messages: the call this answers."""
    name: str = ""
    """For tool messages: the tool's name."""
    tokens: int = 0
    """Token count under the policy tokenizer (0 = not counted)."""
    token_ids: list[int] | None = None
    """For policy turns generated in-process/vLLM: the exact ids generated (RL trains on these)."""
    logprobs: list[float] | None = None
    """Per-token log-probabilities of token_ids at generation time."""


class Action(Record):
    """One executed tool call."""

    step: int
    """1-based step number."""
    tool: str
    """Tool name."""
    arguments: dict[str, Any]
    """Arguments as executed."""
    base_command: str
    """Normalised base command (METHOD §6), used for loop detection."""
    exit_code: int | None = None
    """bash exit code (None for non-bash tools)."""
    error: str = ""
    """Misuse or failure message, if the call was rejected."""
    duration_s: float = 0.0
    """Wall time of the call."""


class ExpertCall(Record):
    """One ask_expert call, metered."""

    step: int
    """Step at which it was asked."""
    question: str
    """The protégé's question."""
    context: list[dict[str, Any]] = []
    """Exactly the messages sent to the expert (problem statement, last N messages, question)."""
    reply: str = ""
    """Expert reply, unwrapped."""
    status: Literal["ok", "quota_exceeded", "budget_exhausted", "error", "cost_limit"] = "ok"
    """Whether the call reached the expert and succeeded."""
    error: str = ""
    """Error text when status != ok."""
    transient: bool = False
    """status `error` only: the failure may pass (transport, overload, rate limit, malformed reply), so
    synth runs the episode again on a rerun."""
    backend: str = ""
    """anthropic | openai | oracle."""
    model: str = ""
    """Expert model id."""
    input_tokens: int = 0
    """Input tokens billed."""
    output_tokens: int = 0
    """Output tokens billed."""
    cost_usd: float = 0.0
    """Dollar cost from the price table (0 on a cache hit)."""
    latency_s: float = 0.0
    """Wall time of the request."""
    cache_hit: bool = False
    """Answered from the response cache."""
    forced: bool = False
    """(v2) The scaffold made this call (agent.forced_ask), not the policy: same tool path, quota and cost
    cap, no policy turn behind it."""
    warranted: float | None = None
    """Hidden judge score u_i (RL only; never shown to the agent)."""
    follow_through: float | None = None
    """Hidden judge score f_i (RL only)."""


class Trajectory(Record):
    """One episode of the agent on one task."""

    format_version: int = FORMAT_VERSION
    """Version of this format."""
    instance_id: str
    """Task instance id."""
    attempt: int = 0
    """Attempt index (synthesis and pass@k)."""
    phase: str = ""
    """synth | rl1 | rl2 | eval | agent."""
    policy_backend: str = ""
    """Backend that produced the policy turns."""
    policy_model: str = ""
    """Model id or path of the policy."""
    expert_backend: str = ""
    """Backend of the expert (oracle is always recorded as such)."""
    expert_model: str = ""
    """Expert model id."""
    messages: list[Message] = []
    """Full message history with provenance."""
    actions: list[Action] = []
    """Executed tool calls."""
    expert_calls: list[ExpertCall] = []
    """ask_expert calls."""
    patch: str = ""
    """Final patch (git diff against base_commit, task-added test files excluded)."""
    status: Status = "running"
    """Terminal status."""
    status_detail: str = ""
    """Human-readable reason for the status."""
    started_at: float = 0.0
    """Unix time the episode started."""
    wall_time_s: float = 0.0
    """Episode wall time."""
    policy_input_tokens: int = 0
    """Prompt tokens processed by the policy over the episode."""
    policy_output_tokens: int = 0
    """Tokens the policy generated."""
    policy_cost_usd: float = 0.0
    """Dollar cost of API policy turns (0 for local models)."""
    resolved: bool | None = None
    """Grading result, once graded."""
    rewards: dict[str, float] = {}
    """Reward terms (RL)."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Phase-specific annotations (e.g. synth rejection reason)."""

    @classmethod
    def failed(
        cls, instance_id: str, attempt: int, phase: str, status: str, detail: str, **fields: Any
    ) -> Trajectory:
        """The record of an episode that never ran to its end (a sandbox that did not start, a timeout, a
        crash): no messages, `status` and its detail; `fields` sets any other field (wall time, extra)."""
        return cls(
            instance_id=instance_id,
            attempt=attempt,
            phase=phase,  # type: ignore[arg-type]
            status=status,  # type: ignore[arg-type]
            status_detail=detail,
            **fields,
        )

    # The episode's totals, defined here once: synth, SFT's dataset view, metrics and traces all read these.
    @property
    def expert_cost_usd(self) -> float:
        """Dollars billed for the expert calls (0 for cache hits and the oracle)."""
        return sum(c.cost_usd for c in self.expert_calls)

    @property
    def cost_usd(self) -> float:
        """Dollars the episode cost: API policy turns plus expert calls."""
        return self.policy_cost_usd + self.expert_cost_usd

    @property
    def expert_tokens(self) -> int:
        """Expert input plus output tokens over the episode."""
        return sum(c.input_tokens + c.output_tokens for c in self.expert_calls)

    @property
    def policy_tokens(self) -> int:
        """Policy prompt plus generated tokens over the episode."""
        return self.policy_input_tokens + self.policy_output_tokens

    @property
    def total_tokens(self) -> int:
        """Every token the episode processed, policy and expert."""
        return self.policy_tokens + self.expert_tokens

    @property
    def steps(self) -> int:
        return len(self.actions)


def parse_record(data: dict[str, Any], where: str) -> Trajectory:
    version = data.get("format_version")
    if version not in KNOWN_VERSIONS:
        raise TrajectoryFormatError(
            f"{where}: unknown trajectory format_version {version!r} (this protege reads {list(KNOWN_VERSIONS)})"
        )
    try:
        return Trajectory.model_validate(data)
    except ValidationError as err:
        raise TrajectoryFormatError(f"{where}: {_first_problem(err)}") from None


def _first_problem(err: ValidationError) -> str:
    """The first validation error as one phrase; required fields missing from one object are named together
    ("messages[0] has no content, provenance")."""
    errors = err.errors()
    first = errors[0]
    if first["type"] != "missing":
        return f"invalid trajectory field {_dotted(first['loc'])}: {first['msg']}"
    parent = first["loc"][:-1]
    missing = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == parent)
    return f"{_dotted(parent) or 'record'} has no {', '.join(missing)}"


def _dotted(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def read_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Yield every trajectory of a JSONL file, refusing unknown versions with file:line."""
    path = Path(path)
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise TrajectoryFormatError(f"{path}:{number}: not valid JSON: {err.msg}") from None
            yield parse_record(data, f"{path}:{number}")


def append_trajectory(path: str | Path, trajectory: Trajectory) -> None:
    """Append one record and flush it to disk (so an interrupted run keeps every finished episode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(trajectory.model_dump_json() + "\n")
        handle.flush()
