"""ask_expert: the compact expert context, metering, limits and the response cache (METHOD §2).

One `ExpertService` per run holds the backend client, the response cache and the run-wide dollar
meter; it is thread-safe because episodes run concurrently. Each episode gets an `ExpertSession`
(`service.session(quota, cost_limit_usd)`), which implements the `Expert` protocol and enforces the
per-episode quota and cost cap.

What the expert sees (METHOD §2), and exactly what `ExpertCall.context` records:
- a system prompt explaining its role (plus, in gold-patch mode, the instruction never to paste
  the reference fix);
- one user message with the problem statement (if `include_problem_statement`), the last
  `context_messages` messages of the protégé's history rendered as text (the scaffold's system
  prompt excluded: it is the same in every episode and says nothing about this one), the gold patch
  (only in gold-patch mode, i.e. synthesis), and the question.

`ask` never raises for API trouble: refusals and failures come back as an `ExpertCall` whose status
(`quota_exceeded`, `cost_limit`, `budget_exhausted`, `error`) and error text say what happened, and
`observation(call)` turns any call into the tool observation the protégé reads. An `error` that may pass
(transport, overload, rate limit, malformed reply; see `protege.agent.expert_backends`) has
`transient=True`, so synthesis reruns that episode instead of keeping a trajectory without guidance.

Response cache: content-addressed by sha256(backend + model + the exact request body), one JSON
file per key under `cache_dir`, written atomically. `record` answers hits from the cache (cost 0,
`cache_hit`) and stores misses; `replay` answers hits and turns misses into an error without any
request; `off` always calls. The oracle is free and deterministic, so it bypasses the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from protege.agent.expert_backends import (
    BACKENDS,
    BackendReply,
    ExpertBackend,
    ExpertBackendError,
    ExpertRequest,
    estimate_tokens,
)
from protege.config import ExpertConfig, ExpertPrices
from protege.tasks import TaskInstance
from protege.trajectory import ExpertCall, Message

log = logging.getLogger(__name__)

GUIDANCE_OPEN = "<expert_llm_guidance>"
GUIDANCE_CLOSE = "</expert_llm_guidance>"

SYSTEM_PROMPT = """\
You are a senior software engineer advising a junior coding agent that is fixing an issue in a \
repository. The agent works alone and asks you only when it is stuck; it has a small number of \
questions per task, so make each answer count.

You do not see the whole session: you get the issue, the agent's most recent messages (its \
actions and the tool outputs it saw) and its question. Answer the question concretely: say where \
to look (files, functions), what is wrong and what to do next. Be brief and specific; when the \
recent messages show the agent going in circles, say so and redirect it. You cannot run commands."""

GOLD_PATCH_INSTRUCTION = """\
You are also shown the reference fix, for your eyes only. Use it to give precise guidance (which \
file and function, what must change and why), but never paste it or reproduce its lines verbatim: \
the agent has to write the change itself."""


def wrap_guidance(text: str) -> str:
    """The expert's reply as the protégé sees it (paper: `<expert_llm_guidance>` tags)."""
    return f"{GUIDANCE_OPEN}\n{text.strip()}\n{GUIDANCE_CLOSE}"


def observation(call: ExpertCall) -> str:
    """The tool observation for an ask_expert call: wrapped guidance, or why there is none."""
    if call.status == "ok":
        return wrap_guidance(call.reply)
    return f"ask_expert failed ({call.status}): {call.error}"


def cost_usd(prices: ExpertPrices, input_tokens: int, output_tokens: int) -> float:
    """Dollars for a call under a per-million-token price table."""
    return (input_tokens * prices.input_per_mtok + output_tokens * prices.output_per_mtok) / 1_000_000


# --------------------------------------------------------------------------------------------------
# Compact context
# --------------------------------------------------------------------------------------------------


def render_message(message: Message) -> str:
    """A history message as readable text: who said it, what, and any tool calls."""
    who = message.role + (f" {message.name}" if message.name else "")
    lines = [f"[{who} · {message.provenance}]"]
    if message.content:
        lines.append(message.content)
    for call in message.tool_calls:
        lines.append(f"-> tool call {call.name}({json.dumps(call.arguments, ensure_ascii=False)})")
    return "\n".join(lines)


def recent_messages(history: list[Message], count: int) -> list[Message]:
    """The last `count` messages of the protégé's history, the scaffold system prompt excluded."""
    visible = [m for m in history if m.provenance != "system"]
    return visible[-count:] if count else []


def build_request(
    cfg: ExpertConfig, question: str, history: list[Message], task: TaskInstance
) -> ExpertRequest:
    """The compact context of METHOD §2 for one question."""
    sections: list[str] = []
    if cfg.include_problem_statement:
        sections.append(f"<problem_statement>\n{task.problem_statement.strip()}\n</problem_statement>")
    recent = recent_messages(history, cfg.context_messages)
    if recent:
        rendered = "\n\n".join(render_message(m) for m in recent)
        sections.append(f'<recent_messages count="{len(recent)}">\n{rendered}\n</recent_messages>')
    system = SYSTEM_PROMPT
    if cfg.gold_patch:
        system = f"{SYSTEM_PROMPT}\n\n{GOLD_PATCH_INSTRUCTION}"
        sections.append(f'<reference_fix do_not_paste="true">\n{task.patch.strip()}\n</reference_fix>')
    sections.append(f"<question>\n{question.strip()}\n</question>")
    return ExpertRequest(system=system, user="\n\n".join(sections), max_tokens=cfg.max_output_tokens)


def request_context(request: ExpertRequest) -> list[dict[str, Any]]:
    """What `ExpertCall.context` records: the system prompt and the user message, verbatim."""
    return [{"role": "system", "content": request.system}, {"role": "user", "content": request.user}]


# --------------------------------------------------------------------------------------------------
# Response cache
# --------------------------------------------------------------------------------------------------


class ResponseCache:
    """Content-addressed replies on disk: `<dir>/<key[:2]>/<key>.json`, atomic writes."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(backend: str, model: str, payload: dict[str, Any]) -> str:
        material = json.dumps({"backend": backend, "model": model, "payload": payload}, sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> BackendReply | None:
        """The stored reply, or None when absent or unreadable (a torn file counts as a miss)."""
        try:
            data = json.loads(self._path(key).read_text())
            return BackendReply(data["reply"], int(data["input_tokens"]), int(data["output_tokens"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def put(self, key: str, backend: str, model: str, payload: dict[str, Any], reply: BackendReply) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "key": key,
            "backend": backend,
            "model": model,
            "payload": payload,
            "reply": reply.text,
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
        }
        # Write-then-rename: concurrent episodes and crashes never leave a half-written entry.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --------------------------------------------------------------------------------------------------
# Service (per run) and session (per episode)
# --------------------------------------------------------------------------------------------------


class ExpertService:
    """Per-run expert: backend client, response cache, run-wide dollar meter. Thread-safe.

    The run budget is guarded by reservations: a call reserves its worst-case cost (estimated input
    plus `max_output_tokens`) before the request and settles the real cost after, so concurrent
    episodes cannot all slip through on the last dollars. A call is refused once spent plus
    in-flight reservations reach the budget; free calls (oracle) are never refused.
    """

    def __init__(self, cfg: ExpertConfig, api_key: str | None = None) -> None:
        self.cfg = cfg
        # Replay needs no credentials: CI replays recorded answers without any key.
        needs_client = cfg.backend == "oracle" or cfg.cache_mode != "replay"
        self.backend: ExpertBackend | None = BACKENDS[cfg.backend](cfg, api_key) if needs_client else None
        self.cache = ResponseCache(cfg.cache_dir)
        self._lock = threading.Lock()
        self._spent = 0.0
        self._reserved = 0.0
        self.requests_sent = 0
        """Requests that reached the backend (cache hits and refusals excluded)."""

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return self._spent

    def session(self, quota: int, cost_limit_usd: float) -> ExpertSession:
        """A fresh per-episode expert (AgentConfig.expert_quota, AgentConfig.cost_limit_usd)."""
        return ExpertSession(self, quota, cost_limit_usd)

    def worst_case_usd(self, request: ExpertRequest) -> float:
        if self.cfg.backend == "oracle":
            return 0.0
        return cost_usd(self.cfg.prices, estimate_tokens(request.system + request.user), request.max_tokens)

    def _reserve(self, amount: float) -> bool:
        with self._lock:
            if amount > 0 and self._spent + self._reserved >= self.cfg.run_budget_usd:
                return False
            self._reserved += amount
            self.requests_sent += 1
            return True

    def _settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self._reserved -= reserved
            self._spent += actual

    def answer(self, request: ExpertRequest, task: TaskInstance) -> ExpertCall:
        """Cache, run budget and backend for one request; status, reply, tokens and cost in the result.

        The result's step, question and context are left for the session to fill in.
        """
        if self.cfg.backend == "oracle" or self.cfg.cache_mode == "off":
            return self._call_backend(request, task, cache_key="")
        key = ResponseCache.key(self.cfg.backend, self.cfg.model, self._payload(request))
        if (hit := self.cache.get(key)) is not None:
            # Tokens describe the exchange (expert share of tokens); nothing is billed again.
            return self._result(
                reply=hit.text, input_tokens=hit.input_tokens, output_tokens=hit.output_tokens, cache_hit=True
            )
        if self.cfg.cache_mode == "replay":
            return self._result(status="error", error=f"not in cache (replay mode): key {key[:16]}")
        return self._call_backend(request, task, cache_key=key)

    def _result(self, **fields: Any) -> ExpertCall:
        return ExpertCall(step=0, question="", backend=self.cfg.backend, model=self.cfg.model, **fields)

    def _payload(self, request: ExpertRequest) -> dict[str, Any]:
        # A static method of the backend class: replay mode builds keys without a client or key.
        return BACKENDS[self.cfg.backend].payload(self.cfg, request)

    def _call_backend(self, request: ExpertRequest, task: TaskInstance, cache_key: str) -> ExpertCall:
        assert self.backend is not None, "a backend exists whenever a request may be sent"
        worst = self.worst_case_usd(request)
        if not self._reserve(worst):
            return self._result(
                status="budget_exhausted",
                error=f"the run's expert budget of ${self.cfg.run_budget_usd:.2f} is spent "
                f"(${self.spent_usd:.4f} used); no more expert calls in this run",
            )
        started = time.monotonic()
        actual = 0.0
        try:
            reply = self.backend.complete(request, task)
        except ExpertBackendError as err:
            return self._result(
                status="error", error=str(err), transient=err.transient, latency_s=time.monotonic() - started
            )
        else:
            if self.cfg.backend != "oracle":
                actual = cost_usd(self.cfg.prices, reply.input_tokens, reply.output_tokens)
            if cache_key:
                self._store(cache_key, request, reply)
            return self._result(
                reply=reply.text,
                input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens,
                cost_usd=actual,
                latency_s=time.monotonic() - started,
            )
        finally:
            self._settle(worst, actual)

    def _store(self, key: str, request: ExpertRequest, reply: BackendReply) -> None:
        try:
            self.cache.put(key, self.cfg.backend, self.cfg.model, self._payload(request), reply)
        except OSError as err:
            # The answer is paid for and valid; a full disk must not cost the episode its guidance.
            log.warning("expert cache: could not store %s under %s: %s", key[:16], self.cache.directory, err)


class ExpertSession:
    """The `Expert` of one episode: quota and cost cap on top of the run's service."""

    def __init__(self, service: ExpertService, quota: int, cost_limit_usd: float) -> None:
        self.service = service
        self.quota = quota
        self.cost_limit_usd = cost_limit_usd
        self.backend = service.cfg.backend
        self.model = service.cfg.model
        self.asked = 0
        """ask_expert calls so far this episode (refused ones included)."""
        self.spent_usd = 0.0
        """Dollars spent on the expert this episode."""

    def ask(self, question: str, history: list[Message], task: TaskInstance, step: int) -> ExpertCall:
        """Answer under the quota, the episode cost cap and the run budget; never raises for API trouble.

        Every call counts against the quota, failed ones too (so a broken API cannot loop an episode).
        The cost cap refuses a paid call once the episode's expert spend has reached it.
        """
        self.asked += 1
        base = {"step": step, "question": question, "backend": self.backend, "model": self.model}
        if self.asked > self.quota:
            return ExpertCall(
                **base,
                status="quota_exceeded",
                error=f"the expert quota of {self.quota} calls per episode is used up; "
                "continue without the expert",
            )
        request = build_request(self.service.cfg, question, history, task)
        context = request_context(request)
        if self.service.worst_case_usd(request) > 0 and self.spent_usd >= self.cost_limit_usd:
            return ExpertCall(
                **base,
                context=context,
                status="cost_limit",
                error=f"this episode's cost cap of ${self.cost_limit_usd:.2f} is reached "
                f"(${self.spent_usd:.4f} spent on the expert)",
            )
        call = self.service.answer(request, task)
        self.spent_usd += call.cost_usd
        return call.model_copy(update={**base, "context": context})
