"""The agent loop (METHOD §1): one small class, `run -> step -> query / execute`, ended by exceptions.

Each step asks the policy for one assistant turn on its view of the history (protege.agent.render:
`agent.history_view` is `full`, every observation as inserted, or `collapsed`, older tool observations
as a one-line placeholder, the last `keep_last_observations` kept in full, expert guidance never
collapsed; the same render RL and SFT use), parses exactly one tool call from it and executes it in the sandbox. The
trajectory keeps the *full* record: every message as inserted (observations truncated at insertion
to `observation_max_chars`, with a marker), every action with its base command (METHOD §6), every
expert call, the policy's token counts and exact token ids.

An episode ends with one terminal status (trajectory.Status):
`submitted` (the submit tool), `step_limit`, `cost_limit` (policy + expert dollars reach
`cost_limit_usd`, or the expert refused for the episode cap), `timeout` (wall time), `format_errors`
(`max_format_errors` consecutive turns without exactly one well-formed tool call),
`context_overflow`, `policy_error`, `budget_exhausted` (the run's expert budget is spent),
`patch_too_large` (the submitted diff is over `sandbox.patch_limit_bytes`) and `sandbox_error`
(the sandbox failed, or its work tree vanished).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from protege.agent.forced import forced_steps
from protege.agent.loops import base_command
from protege.agent.policies import ContextOverflow, PolicyError
from protege.agent.protocols import Expert, PatchTooLarge, Policy, PolicyTurn, Sandbox, SandboxError
from protege.agent.qwen_format import split_completion
from protege.agent.render import (  # noqa: F401 - COLLAPSED_TEMPLATE and process_history are re-exported
    COLLAPSED_TEMPLATE,
    policy_view,
    process_history,
    tool_schemas,
)
from protege.agent.tools import TOOL_SCHEMAS, ToolBox
from protege.config import AgentConfig
from protege.tasks import TaskInstance
from protege.trajectory import Action, ExpertCall, Message, Status, ToolCall, Trajectory

# --------------------------------------------------------------------------------------------------
# Prompt text: every string the policy reads from the scaffold lives here.
# --------------------------------------------------------------------------------------------------

SYSTEM_PROMPT = """\
You are a software engineer fixing an issue in a repository checked out at {workdir}. You act only \
through tools, exactly one tool call per turn: `bash` runs a command, `str_replace_editor` views and \
edits files, `ask_expert` asks a stronger expert model for guidance (a few questions per task: ask \
when you are stuck, not for every step) and `submit` hands in your changes and ends the session. \
Explore the code, reproduce the issue, make a minimal fix to the source (not the tests), check it, \
then submit."""

TASK_TEMPLATE = """\
<issue>
{problem_statement}
</issue>

The repository is at {workdir}. Resolve the issue above, then call `submit`."""

FORMAT_ERROR_TEMPLATE = """\
Format error: {reason}. Every turn must contain exactly one tool call, written as
<tool_call>
{{"name": "<tool>", "arguments": {{...}}}}
</tool_call>
with one of the tools: {tools}."""

TRUNCATION_MARKER = "\n<observation truncated: {cut} of {total} characters omitted>\n"


# --------------------------------------------------------------------------------------------------
# History processing
# --------------------------------------------------------------------------------------------------


def truncate_observation(text: str, max_chars: int) -> str:
    """`text` if it fits, else its first and last max_chars/2 characters around a marker saying how much was cut."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    tail = max_chars - head
    marker = TRUNCATION_MARKER.format(cut=len(text) - max_chars, total=len(text))
    return text[:head] + marker + text[len(text) - tail :]


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


class EpisodeEnd(Exception):
    """Raised inside the loop to end the episode with a terminal status."""

    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status: Status = status
        self.detail = detail


class FormatError(Exception):
    """The turn did not hold exactly one well-formed tool call; the message says why."""


# Expert refusals that end the episode: spending is over for this episode or this run.
_EXPERT_TERMINAL: dict[str, Status] = {"cost_limit": "cost_limit", "budget_exhausted": "budget_exhausted"}


class Agent:
    """One episode of a policy on a task in a sandbox. `run()` returns the Trajectory; `turns` keeps every
    PolicyTurn as generated (prompt ids included) for RL."""

    def __init__(
        self,
        cfg: AgentConfig,
        policy: Policy,
        sandbox: Sandbox,
        task: TaskInstance,
        expert: Expert | None = None,
        *,
        phase: str = "agent",
        attempt: int = 0,
        on_message: Callable[[Message], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.policy = policy
        self.sandbox = sandbox
        self.task = task
        self.expert = expert
        self.phase = phase
        self.attempt = attempt
        self.on_message = on_message
        self.tools = ToolBox(
            sandbox,
            task,
            expert,
            cfg.sandbox.command_timeout_s,
            patch_limit_bytes=cfg.sandbox.patch_limit_bytes,
        )
        self.messages: list[Message] = []
        self.actions: list[Action] = []
        self.expert_calls: list[ExpertCall] = []
        self.turns: list[PolicyTurn] = []
        self.patch = ""
        self.consecutive_format_errors = 0
        self.format_errors = 0
        self._started_monotonic = 0.0
        self.forced_pending = set(forced_steps(cfg.forced_ask, task.instance_id, attempt, cfg.step_limit))
        """Steps before which the scaffold still has to force an ask_expert call (agent.forced_ask)."""

    # bookkeeping ---------------------------------------------------------------------------------

    def add(self, message: Message) -> None:
        self.messages.append(message)
        if self.on_message is not None:
            self.on_message(message)

    def add_observation(self, text: str, **fields: object) -> None:
        content = truncate_observation(text, self.cfg.observation_max_chars)
        role = "tool" if fields.get("tool_call_id") else "user"
        self.add(Message(role=role, content=content, **fields))  # type: ignore[arg-type]

    @property
    def cost_usd(self) -> float:
        return sum(t.cost_usd for t in self.turns) + sum(c.cost_usd for c in self.expert_calls)

    # run -> step -> query / execute ----------------------------------------------------------------

    def run(self) -> Trajectory:
        """Play the episode to its end; never raises for anything an episode can run into."""
        started_at = time.time()
        self._started_monotonic = time.monotonic()
        workdir = self.sandbox.workdir
        self.add(Message(role="system", provenance="system", content=SYSTEM_PROMPT.format(workdir=workdir)))
        task_text = TASK_TEMPLATE.format(problem_statement=self.task.problem_statement, workdir=workdir)
        self.add(Message(role="user", provenance="task", content=task_text))
        try:
            while True:
                self.step()
        except EpisodeEnd as end:
            status, detail = end.status, end.detail
        except PatchTooLarge as err:
            status, detail = "patch_too_large", str(err)
        except SandboxError as err:
            status, detail = "sandbox_error", str(err)
        return self.trajectory(status, detail, started_at)

    def step(self) -> None:
        self.check_limits()
        self.forced_ask()
        turn = self.query()
        try:
            call = self.parse(turn)
        except FormatError as err:
            self.add(self.assistant_message(turn, turn.text, []))
            self.format_error(str(err))
            return
        self.consecutive_format_errors = 0
        thought, _ = split_completion(turn.text)
        self.add(self.assistant_message(turn, thought, [call]))
        self.execute(call)

    def forced_ask(self) -> None:
        """A scaffold-forced ask_expert call before this step when the schedule says so (once per step,
        whatever format errors follow): the same tool path, quota and cost cap as the policy's calls; the
        guidance arrives as a user message (no policy turn asked for it) and the call is marked forced."""
        step = len(self.actions) + 1
        if step not in self.forced_pending:
            return
        self.forced_pending.discard(step)
        question = self.cfg.forced_ask.question
        call = ToolCall(id=f"forced_{step}", name="ask_expert", arguments={"question": question})
        outcome = self.tools.execute(call, self.messages, step)
        self.add_observation(outcome.observation, provenance=outcome.provenance, name="ask_expert")
        if outcome.expert_call is not None:
            self.expert_calls.append(outcome.expert_call.model_copy(update={"forced": True}))
            terminal = _EXPERT_TERMINAL.get(outcome.expert_call.status)
            if terminal is not None:
                raise EpisodeEnd(terminal, outcome.expert_call.error)

    def check_limits(self) -> None:
        elapsed = time.monotonic() - self._started_monotonic
        if elapsed > self.cfg.wall_time_s:
            raise EpisodeEnd(
                "timeout", f"wall time {elapsed:.0f} s exceeded the limit of {self.cfg.wall_time_s:.0f} s"
            )
        if len(self.actions) >= self.cfg.step_limit:
            raise EpisodeEnd("step_limit", f"reached the step limit of {self.cfg.step_limit} actions")
        cost = self.cost_usd
        if cost > 0 and cost >= self.cfg.cost_limit_usd:
            raise EpisodeEnd("cost_limit", f"spent ${cost:.4f}, the cap is ${self.cfg.cost_limit_usd:.2f}")

    def query(self) -> PolicyTurn:
        view = policy_view(self.messages, self.cfg.history_view, self.cfg.keep_last_observations)
        try:
            turn = self.policy.generate(view, tool_schemas())
        except ContextOverflow as err:
            raise EpisodeEnd("context_overflow", str(err)) from None
        except PolicyError as err:
            raise EpisodeEnd("policy_error", str(err)) from None
        self.turns.append(turn)
        return turn

    def parse(self, turn: PolicyTurn) -> ToolCall:
        if turn.format_error:
            raise FormatError(turn.format_error)
        if not turn.tool_calls:
            raise FormatError("your turn contained no tool call")
        if len(turn.tool_calls) > 1:
            raise FormatError(
                f"your turn contained {len(turn.tool_calls)} tool calls; make exactly one per turn"
            )
        return turn.tool_calls[0]

    def format_error(self, reason: str) -> None:
        self.format_errors += 1
        self.consecutive_format_errors += 1
        tools = ", ".join(schema["function"]["name"] for schema in TOOL_SCHEMAS)
        self.add_observation(FORMAT_ERROR_TEMPLATE.format(reason=reason, tools=tools), provenance="tool")
        if self.consecutive_format_errors >= self.cfg.max_format_errors:
            raise EpisodeEnd(
                "format_errors",
                f"{self.consecutive_format_errors} consecutive turns without a valid tool call",
            )

    def execute(self, call: ToolCall) -> None:
        step = len(self.actions) + 1
        outcome = self.tools.execute(call, self.messages, step)
        self.actions.append(
            Action(
                step=step,
                tool=call.name,
                arguments=call.arguments,
                base_command=base_command(call.name, call.arguments),
                exit_code=outcome.exit_code,
                error=outcome.error,
                duration_s=outcome.duration_s,
            )
        )
        self.add_observation(
            outcome.observation,
            provenance=outcome.provenance,
            tool_call_id=call.id or f"call_{step}",
            name=call.name,
        )
        if outcome.expert_call is not None:
            self.expert_calls.append(outcome.expert_call)
            terminal = _EXPERT_TERMINAL.get(outcome.expert_call.status)
            if terminal is not None:
                raise EpisodeEnd(terminal, outcome.expert_call.error)
        if outcome.submitted:
            self.patch = outcome.patch
            raise EpisodeEnd("submitted", f"submitted at step {step}")

    # the record ----------------------------------------------------------------------------------

    @staticmethod
    def assistant_message(turn: PolicyTurn, content: str, calls: list[ToolCall]) -> Message:
        return Message(
            role="assistant",
            provenance="policy",
            content=content,
            tool_calls=calls,
            tokens=turn.output_tokens,
            token_ids=turn.token_ids,
            logprobs=turn.logprobs,
        )

    def trajectory(self, status: Status, detail: str, started_at: float) -> Trajectory:
        return Trajectory(
            instance_id=self.task.instance_id,
            attempt=self.attempt,
            phase=self.phase,
            policy_backend=self.policy.name,
            policy_model=self.policy.model,
            expert_backend=self.expert.backend if self.expert is not None else "",
            expert_model=self.expert.model if self.expert is not None else "",
            messages=self.messages,
            actions=self.actions,
            expert_calls=self.expert_calls,
            patch=self.patch,
            status=status,
            status_detail=detail,
            started_at=started_at,
            wall_time_s=time.monotonic() - self._started_monotonic,
            policy_input_tokens=sum(t.input_tokens for t in self.turns),
            policy_output_tokens=sum(t.output_tokens for t in self.turns),
            policy_cost_usd=sum(t.cost_usd for t in self.turns),
            extra={"format_errors": self.format_errors},
        )
