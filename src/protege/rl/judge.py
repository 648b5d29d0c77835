"""The hidden judge (METHOD §5.1): per expert call, was asking warranted (u_i) and was the guidance followed (f_i).

Both scores lie in [0, 1] and are written only into `ExpertCall.warranted` / `ExpertCall.follow_through`
of the stored trajectory; nothing here ever adds a message, so the agent never sees them.

Which calls are judged: those that reached the expert (`status == "ok"`); a refused or failed call
carries no guidance to follow and is accounted for by R_quota instead. A call's *segment* is the
actions after it up to the next ask_expert action or the end; a call with an empty segment (the
last action, or followed at once by another call) has no f_i (`follow_through` stays None).

Two judges, picked by `RewardConfig.judge` through the literal dict in `make_judge`:
- `expert`: rubric prompts to the expert model through the run's `ExpertService` (its backend,
  response cache, run budget and metering), answered as JSON `{"score": float, "reason": str}`. A
  malformed answer is retried once with a note saying what was wrong (a different request, so the
  response cache cannot hand back the same bad answer); a second failure scores
  `judge_neutral_score` and is counted (`malformed`; `failed` for requests that did not succeed).
- `heuristic`: offline and deterministic, recorded as such in `Trajectory.extra["judge"]`.
  u = min(1, (failed actions + repeated base commands among the K actions before the call) /
  judge_stall_signals): an agent that was erroring or repeating itself had reason to ask; one that
  asked before doing anything had none. f = min(1, targets acted on / min(targets named,
  judge_follow_hits)), where targets are the backticked spans and file paths the guidance names and
  "acted on" means one appears in the arguments of a segment action (a path also by its basename);
  guidance that names nothing scores neutral.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import threading
from typing import Any, Protocol

from protege.agent.expert import ExpertService
from protege.agent.expert_backends import ExpertRequest
from protege.config import RewardConfig
from protege.tasks import TaskInstance
from protege.trajectory import Action, ExpertCall, Trajectory

log = logging.getLogger(__name__)

ASK_EXPERT = "ask_expert"

JUDGE_SYSTEM = """\
You are a strict, fair reviewer. A junior coding agent fixing an issue may ask a senior expert for \
help a few times per task. You grade one aspect of one such request with the rubric you are given. \
Answer with only a JSON object of the form {"score": <number from 0 to 1>, "reason": "<one sentence>"} \
and nothing else."""

WARRANT_RUBRIC = """\
Was it warranted for the agent to ask this question at this point, given what it knew (the context \
below is exactly what the expert saw)?
- 1.0: the agent was genuinely stuck: repeated failures or errors it could not resolve, going in \
circles, or a decision it could not make from the information it had.
- 0.5: borderline: some progress was still possible alone, but the question saves real effort.
- 0.0: the answer was readily available in the issue or the recent outputs, the agent asked before \
trying anything, or the question is vague."""

FOLLOW_RUBRIC = """\
Did the agent act on the expert's guidance in the actions it took after receiving it (until its \
next question or the end of the episode)?
- 1.0: its actions carried out what the guidance said (it looked at the files or functions named, \
made the change described, ran the command suggested).
- 0.5: it followed part of the guidance, or only after a detour.
- 0.0: it ignored or contradicted the guidance."""

ANSWER_FORMAT = (
    'Answer with only the JSON object {"score": <number from 0 to 1>, "reason": "<one sentence>"}.'
)

RETRY_NOTE = "Your previous answer could not be used ({problem})."

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")
_BACKTICKED = re.compile(r"`([^`\n]+)`")
# A file path: optional directories, then name.ext (letters first, so version numbers are not paths).
_PATH = re.compile(r"(?<![\w/.-])(?:[\w.-]+/)*[A-Za-z_][\w-]*\.[A-Za-z]\w{0,5}(?![\w/])")


class Judge(Protocol):
    """Scores one expert call; both methods return a number in [0, 1]."""

    name: str

    def warranted(
        self, call: ExpertCall, before: list[Action], trajectory: Trajectory, task: TaskInstance
    ) -> float:
        """u_i: `before` are the actions preceding the call."""
        ...

    def follow_through(
        self, call: ExpertCall, segment: list[Action], trajectory: Trajectory, task: TaskInstance
    ) -> float:
        """f_i: `segment` (non-empty) are the actions after the call up to the next call or the end."""
        ...

    def counters(self) -> dict[str, float]:
        """Cumulative counters (requests, cost, neutral fallbacks), for logging."""
        ...


# --------------------------------------------------------------------------------------------------
# Segments and annotation
# --------------------------------------------------------------------------------------------------


def judged_calls(trajectory: Trajectory) -> list[ExpertCall]:
    """The calls the judge scores: those that reached the expert."""
    return [call for call in trajectory.expert_calls if call.status == "ok"]


def _action_index(trajectory: Trajectory, call: ExpertCall) -> int:
    for index, action in enumerate(trajectory.actions):
        if action.step == call.step and action.tool == ASK_EXPERT:
            return index
    raise ValueError(
        f"trajectory {trajectory.instance_id}: expert call at step {call.step} has no ask_expert action at that step"
    )


def actions_before(trajectory: Trajectory, call: ExpertCall) -> list[Action]:
    """Every action before the call, in order."""
    return trajectory.actions[: _action_index(trajectory, call)]


def segment(trajectory: Trajectory, call: ExpertCall) -> list[Action]:
    """Actions after the call up to (excluding) the next ask_expert action or the end; may be empty."""
    following = trajectory.actions[_action_index(trajectory, call) + 1 :]
    for index, action in enumerate(following):
        if action.tool == ASK_EXPERT:
            return following[:index]
    return following


def annotate(trajectory: Trajectory, task: TaskInstance, judge: Judge) -> None:
    """Score every judged call not yet scored, in place; records the judge's name in `extra["judge"]`.

    Calls already carrying scores are left alone, so re-scoring a stored trajectory costs nothing.
    """
    for call in judged_calls(trajectory):
        if call.warranted is None:
            call.warranted = judge.warranted(call, actions_before(trajectory, call), trajectory, task)
        following = segment(trajectory, call)
        if following and call.follow_through is None:
            call.follow_through = judge.follow_through(call, following, trajectory, task)
    trajectory.extra["judge"] = judge.name


# --------------------------------------------------------------------------------------------------
# Expert judge
# --------------------------------------------------------------------------------------------------


def parse_answer(text: str) -> tuple[float | None, str]:
    """(score, "") for a valid `{"score": x, "reason": "..."}` with 0 <= x <= 1, else (None, what is wrong)."""
    body = _FENCE.sub("", text.strip())
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None, f"not a JSON object: {text[:80]!r}"
    if not isinstance(data, dict):
        return None, f"not a JSON object: {text[:80]!r}"
    score, reason = data.get("score"), data.get("reason")
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None, f"`score` must be a number, got {score!r}"
    if not 0.0 <= float(score) <= 1.0:
        return None, f"`score` must lie in [0, 1], got {score}"
    if not isinstance(reason, str):
        return None, f"`reason` must be a string, got {reason!r}"
    return float(score), ""


def render_action(action: Action, max_chars: int) -> str:
    """One line per action: step, tool, arguments (truncated) and how it ended."""
    arguments = json.dumps(action.arguments, ensure_ascii=False)
    if len(arguments) > max_chars:
        arguments = arguments[:max_chars] + f"... [{len(arguments) - max_chars} chars cut]"
    outcome = f" -> error: {action.error}" if action.error else ""
    if action.exit_code not in (None, 0):
        outcome += f" -> exit code {action.exit_code}"
    return f"step {action.step}: {action.tool} {arguments}{outcome}"


def _expert_saw(call: ExpertCall) -> str:
    return "\n\n".join(str(m.get("content", "")) for m in call.context if m.get("role") == "user")


def warrant_prompt(call: ExpertCall) -> str:
    """The rubric prompt for u_i: the rubric, what the expert saw, and the question."""
    return (
        f"<rubric>\n{WARRANT_RUBRIC}\n</rubric>\n\n<context_the_expert_saw>\n{_expert_saw(call)}\n"
        f"</context_the_expert_saw>\n\n<question>\n{call.question.strip()}\n</question>\n\n{ANSWER_FORMAT}"
    )


def follow_prompt(call: ExpertCall, following: list[Action], max_chars: int) -> str:
    """The rubric prompt for f_i: the rubric, the question, the guidance and the segment's actions."""
    actions = "\n".join(render_action(a, max_chars) for a in following)
    return (
        f"<rubric>\n{FOLLOW_RUBRIC}\n</rubric>\n\n<question>\n{call.question.strip()}\n</question>\n\n"
        f"<guidance>\n{call.reply.strip()}\n</guidance>\n\n"
        f'<actions_after_guidance count="{len(following)}">\n{actions}\n</actions_after_guidance>\n\n'
        f"{ANSWER_FORMAT}"
    )


class ExpertJudge:
    """Rubric prompts to the expert model; thread-safe counters of requests, cost and fallbacks."""

    name = "expert"

    def __init__(self, cfg: RewardConfig, service: ExpertService) -> None:
        if service.cfg.backend == "oracle":
            raise ValueError(
                "reward judge 'expert' needs a real model backend, but expert.backend is 'oracle' "
                "(it cannot grade); set the stage's judge to 'heuristic' for offline runs"
            )
        self.cfg = cfg
        self.service = service
        self._lock = threading.Lock()
        self.requests = 0
        """Judge requests answered (cache hits included)."""
        self.cost_usd = 0.0
        """Dollars the judge spent (also counted in the service's run meter)."""
        self.malformed = 0
        """Scores that fell back to neutral because both answers were malformed."""
        self.failed = 0
        """Scores that fell back to neutral because the requests themselves failed."""

    def warranted(
        self, call: ExpertCall, before: list[Action], trajectory: Trajectory, task: TaskInstance
    ) -> float:
        return self._score(warrant_prompt(call), task, f"{trajectory.instance_id} step {call.step} warranted")

    def follow_through(
        self, call: ExpertCall, segment: list[Action], trajectory: Trajectory, task: TaskInstance
    ) -> float:
        prompt = follow_prompt(call, segment, self.cfg.judge_action_chars)
        return self._score(prompt, task, f"{trajectory.instance_id} step {call.step} follow-through")

    def _score(self, user: str, task: TaskInstance, where: str) -> float:
        request = ExpertRequest(system=JUDGE_SYSTEM, user=user, max_tokens=self.cfg.judge_max_output_tokens)
        request_failed = False
        for _ in range(2):  # the first answer and one retry (METHOD §5.1)
            result = self.service.answer(request, task)
            with self._lock:
                self.requests += 1
                self.cost_usd += result.cost_usd
            if result.status != "ok":
                request_failed, problem = True, f"request {result.status}: {result.error}"
            else:
                request_failed = False
                score, problem = parse_answer(result.reply)
                if score is not None:
                    return score
            request = ExpertRequest(
                system=request.system,
                user=f"{user}\n\n{RETRY_NOTE.format(problem=problem)} {ANSWER_FORMAT}",
                max_tokens=request.max_tokens,
            )
        with self._lock:
            if request_failed:
                self.failed += 1
            else:
                self.malformed += 1
        log.warning("judge %s: no usable answer after a retry (%s); scoring neutral", where, problem)
        return self.cfg.judge_neutral_score

    def counters(self) -> dict[str, float]:
        """Cumulative counters, for logging."""
        with self._lock:
            return {
                "judge_requests": float(self.requests),
                "judge_cost_usd": self.cost_usd,
                "judge_malformed": float(self.malformed),
                "judge_failed": float(self.failed),
            }


# --------------------------------------------------------------------------------------------------
# Heuristic judge
# --------------------------------------------------------------------------------------------------


def _failed(action: Action) -> bool:
    return bool(action.error) or action.exit_code not in (None, 0)


def guidance_targets(guidance: str, min_chars: int) -> list[str]:
    """What the guidance names: backticked spans and file paths, deduplicated in order."""
    found = [m.strip() for m in _BACKTICKED.findall(guidance)] + _PATH.findall(guidance)
    return [t for t in dict.fromkeys(found) if len(t) >= min_chars]


def _action_text(action: Action) -> str:
    return " ".join(str(value) for value in action.arguments.values())


def _acted_on(target: str, texts: list[str]) -> bool:
    names = {target}
    if _PATH.fullmatch(target):
        names.add(posixpath.basename(target))
    return any(name in text for name in names for text in texts)


class HeuristicJudge:
    """Offline, deterministic stand-in for the expert judge (see the module docstring)."""

    name = "heuristic"

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg

    def warranted(
        self, call: ExpertCall, before: list[Action], trajectory: Trajectory, task: TaskInstance
    ) -> float:
        window = [a for a in before if a.tool != ASK_EXPERT][-self.cfg.judge_window :]
        errors = sum(_failed(a) for a in window)
        repeats = sum(window[i].base_command == window[i - 1].base_command for i in range(1, len(window)))
        return min(1.0, (errors + repeats) / self.cfg.judge_stall_signals)

    def follow_through(
        self, call: ExpertCall, segment: list[Action], trajectory: Trajectory, task: TaskInstance
    ) -> float:
        targets = guidance_targets(call.reply, self.cfg.judge_min_target_chars)
        if not targets:
            return self.cfg.judge_neutral_score
        texts = [_action_text(a) for a in segment]
        hits = sum(_acted_on(t, texts) for t in targets)
        return min(1.0, hits / min(len(targets), self.cfg.judge_follow_hits))

    def counters(self) -> dict[str, float]:
        """The heuristic makes no requests; the same keys as the expert judge, all zero."""
        return {"judge_requests": 0.0, "judge_cost_usd": 0.0, "judge_malformed": 0.0, "judge_failed": 0.0}


def make_judge(cfg: RewardConfig, service: ExpertService | None = None) -> ExpertJudge | HeuristicJudge:
    """The judge named by `cfg.judge`; the expert judge needs the run's ExpertService."""

    def expert() -> ExpertJudge:
        if service is None:
            raise ValueError("reward judge 'expert' needs the run's ExpertService (got none)")
        return ExpertJudge(cfg, service)

    judges: dict[str, Any] = {"expert": expert, "heuristic": lambda: HeuristicJudge(cfg)}
    return judges[cfg.judge]()
