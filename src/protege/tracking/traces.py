"""An agent episode as a trace: plain data that `Tracker.log_trace` turns into an MLflow trace.

One trace per episode: a root AGENT span (the task, the status, the patch's size, whether it resolved),
one TOOL span per executed step (its arguments, exit code or error, and the observation it returned) and
one LLM span per expert call, under the step that asked it, carrying its token counts and dollar cost
(as MLflow's own usage/cost attributes, which the UI sums per trace, and as `protege.*` attributes).

The trace is built after the episode from its recorded trajectory, not by instrumenting the agent live:
the trajectory is already the one record of what happened (and of every expert call's metering), an
episode's trace then costs no request while the episode runs, and a trace can be (re)logged for an
episode that was run earlier (a resumed eval). Span times come from the trajectory: each step lasts its
recorded `duration_s`; the rest of the episode's wall time (the policy's turns) is spread evenly before the
steps. Expert calls keep their recorded latency inside their step.

Plain data only (no mlflow import; see protege.tracking): a spec is a dict that can be buffered and
spooled while the tracking server is down.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from protege.trajectory import ExpertCall, Message, Trajectory

SPAN_AGENT, SPAN_TOOL, SPAN_LLM = "AGENT", "TOOL", "LLM"
_NS = 1_000_000_000
_CUT = "...[truncated]"


def clip(value: Any, limit: int) -> Any:
    """`value` with every string longer than `limit` cut (marked), inside dicts and lists too."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[: max(limit - len(_CUT), 0)] + _CUT
    if isinstance(value, dict):
        return {key: clip(item, limit) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clip(item, limit) for item in value]
    return value


def _observations(messages: list[Message]) -> list[Message]:
    """Tool results in order (expert guidance included), each answering one executed step."""
    return [message for message in messages if message.role == "tool"]


def _expert_span(call: ExpertCall, start_ns: int, parent: int | None, limit: int) -> dict[str, Any]:
    latency_ns = int(call.latency_s * _NS)
    usage = {
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "total_tokens": call.input_tokens + call.output_tokens,
    }
    attributes = {
        "protege.expert.backend": call.backend,
        "protege.expert.model": call.model,
        "protege.expert.status": call.status,
        "protege.expert.cache_hit": call.cache_hit,
        "protege.expert.latency_s": call.latency_s,
        "protege.input_tokens": call.input_tokens,
        "protege.output_tokens": call.output_tokens,
        "protege.cost_usd": call.cost_usd,
    }
    if call.error:
        attributes["protege.expert.error"] = call.error
    return {
        "name": f"ask_expert ({call.model or call.backend})",
        "type": SPAN_LLM,
        "parent": parent,
        "start_ns": start_ns,
        "end_ns": start_ns + latency_ns,
        "inputs": clip({"question": call.question, "messages": call.context}, limit),
        "outputs": clip({"reply": call.reply}, limit),
        "attributes": attributes,
        "usage": usage,
        "cost_usd": call.cost_usd,
        "error": call.error if call.status != "ok" else "",
    }


def episode_trace(trajectory: Trajectory, max_chars: int = 2000, **tags: str) -> dict[str, Any]:
    """The trace spec of one episode (see the module docstring). Spans refer to their parent by index
    into `spans` (None: the root). `tags` become trace tags; strings in inputs and outputs are cut to
    `max_chars`."""
    wall_ns = int(trajectory.wall_time_s * _NS)
    start_ns = int(trajectory.started_at * _NS) if trajectory.started_at else time.time_ns() - wall_ns
    step_ns = [int(action.duration_s * _NS) for action in trajectory.actions]
    gap_ns = max(wall_ns - sum(step_ns), 0) // (len(step_ns) + 1)
    observations = _observations(trajectory.messages)
    calls = list(trajectory.expert_calls)
    spans: list[dict[str, Any]] = []
    cursor = start_ns
    for index, action in enumerate(trajectory.actions):
        cursor += gap_ns
        observation = observations[index].content if index < len(observations) else ""
        outputs: dict[str, Any] = {"observation": observation}
        if action.exit_code is not None:
            outputs["exit_code"] = action.exit_code
        spans.append(
            {
                "name": f"step {action.step}: {action.tool}",
                "type": SPAN_TOOL,
                "parent": None,
                "start_ns": cursor,
                "end_ns": cursor + step_ns[index],
                "inputs": clip(action.arguments, max_chars),
                "outputs": clip(outputs, max_chars),
                "attributes": {
                    "protege.step": action.step,
                    "protege.tool": action.tool,
                    "protege.base_command": action.base_command,
                },
                "usage": None,
                "cost_usd": None,
                "error": action.error,
            }
        )
        parent = len(spans) - 1
        for call in [c for c in calls if c.step == action.step and action.tool == "ask_expert"]:
            calls.remove(call)
            spans.append(_expert_span(call, cursor, parent, max_chars))
        cursor += step_ns[index]
    # Calls no executed step accounts for (a refused call, an episode cut short) hang off the root.
    spans.extend(_expert_span(call, start_ns, None, max_chars) for call in calls)
    root_outputs = {
        "status": trajectory.status,
        "detail": trajectory.status_detail,
        "resolved": trajectory.resolved,
        "patch_chars": len(trajectory.patch),
        "steps": trajectory.steps,
        "expert_calls": len(trajectory.expert_calls),
    }
    return {
        "name": f"{trajectory.phase or 'agent'} {trajectory.instance_id}#{trajectory.attempt}",
        "type": SPAN_AGENT,
        "start_ns": start_ns,
        "end_ns": start_ns + max(wall_ns, cursor - start_ns),
        "inputs": {"instance_id": trajectory.instance_id, "attempt": trajectory.attempt},
        "outputs": clip(root_outputs, max_chars),
        "attributes": {
            "protege.phase": trajectory.phase,
            "protege.policy_model": trajectory.policy_model,
            "protege.expert_model": trajectory.expert_model,
            "protege.expert_tokens": trajectory.expert_tokens,
            "protege.expert_cost_usd": trajectory.expert_cost_usd,
            "protege.policy_input_tokens": trajectory.policy_input_tokens,
            "protege.policy_output_tokens": trajectory.policy_output_tokens,
        },
        "tags": {
            "protege.instance_id": trajectory.instance_id,
            "protege.status": trajectory.status,
            "protege.phase": trajectory.phase,
            **tags,
        },
        "spans": spans,
    }


def log_episode_traces(
    tracker: Any, run_id: str, trajectories: Iterable[Trajectory], limit: int | None = None, **tags: str
) -> int:
    """Log each episode (the first `limit` when given) as a trace linked to `run_id` through `tracker`
    (a protege.tracking.Tracker; buffered while the server is down). Returns how many were logged."""
    max_chars = tracker.cfg.trace_value_max_chars
    count = 0
    for trajectory in trajectories:
        if limit is not None and count >= limit:
            break
        tracker.log_trace(run_id, episode_trace(trajectory, max_chars, **tags))
        count += 1
    return count
