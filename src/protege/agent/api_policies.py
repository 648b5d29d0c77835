"""Policy backends behind an API: an OpenAI-compatible server (vLLM) and Anthropic's Messages API.

- `OpenAIChatPolicy`: `/v1/chat/completions` through the openai SDK, tool schemas in the request, tool calls from the server's parser or from Qwen2.5
  `<tool_call>` blocks in the content. It asks vLLM for the sampled ids (`return_token_ids`,
  `return_tokens_as_token_ids`) and logprobs and returns them when the server provides them, so RL
  never re-tokenises text. Transient failures (connection, 408/409/429/5xx) are retried by the SDK.
- `AnthropicPolicy`: Claude acting through `tool_use` (the strong model of synthesis); our history
  becomes content blocks (`tool_use` in assistant turns, `tool_result` in user turns).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

from protege.agent.policies import ContextOverflow, PolicyError, parse_completion, to_chat_messages
from protege.agent.protocols import PolicyTurn
from protege.config import PolicyConfig
from protege.trajectory import Message, ToolCall

# How much of an HTTP error body to quote in an error message.
ERROR_BODY_CHARS = 300
# Phrases servers use when a prompt exceeds the model's context (vLLM / OpenAI, Anthropic).
CONTEXT_OVERFLOW_PHRASES = (
    "maximum context length",
    "context length",
    "prompt is too long",
    "too many tokens",
)
# HTTP statuses worth retrying (the set the anthropic SDK retries).
RETRYABLE_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class TransientPolicyError(PolicyError):
    """A failure worth retrying (connection trouble, timeouts, 408/409/429/5xx)."""


def _overflow(message: str) -> bool:
    lowered = message.lower()
    return any(phrase in lowered for phrase in CONTEXT_OVERFLOW_PHRASES)


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible server (vLLM)
# --------------------------------------------------------------------------------------------------


def _openai_tool_calls(message: dict[str, Any]) -> tuple[list[ToolCall], str]:
    calls, errors = [], []
    for raw in message.get("tool_calls") or []:
        function = raw.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError as err:
            errors.append(f"arguments of {function.get('name')} are not valid JSON: {err.msg}")
            continue
        if not isinstance(parsed, dict):
            errors.append(f"arguments of {function.get('name')} must be a JSON object")
            continue
        calls.append(
            ToolCall(id=str(raw.get("id") or ""), name=str(function.get("name", "")), arguments=parsed)
        )
    return calls, errors[0] if errors else ""


def _sampled_ids(choice: dict[str, Any]) -> list[int] | None:
    if isinstance(choice.get("token_ids"), list):  # vLLM `return_token_ids`
        return [int(i) for i in choice["token_ids"]]
    content = (choice.get("logprobs") or {}).get("content") or []
    tokens = [entry.get("token", "") for entry in content]
    if tokens and all(t.startswith("token_id:") for t in tokens):  # vLLM `return_tokens_as_token_ids`
        return [int(t.removeprefix("token_id:")) for t in tokens]
    return None


class OpenAIChatPolicy:
    """A model behind an OpenAI-compatible chat endpoint. Tool calls come from the server's parser
    (`message.tool_calls`) or, when it has none, from Qwen2.5 `<tool_call>` blocks in the content."""

    name = "openai"

    def __init__(self, cfg: PolicyConfig, model: str, api_key: str | None = None) -> None:
        if not cfg.base_url:
            raise ValueError("agent.policy.base_url is empty; the openai policy needs the server URL")
        self.cfg = cfg
        self.model = model
        import openai  # only when this backend is used

        base = cfg.base_url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        self.url = base + "/chat/completions"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self._ids = itertools.count()
        self._openai = openai
        # The SDK retries transient failures (connection, 408/409/429/5xx) itself; a keyless vLLM takes any key.
        self._client = openai.OpenAI(
            base_url=base, api_key=self.api_key or "none", timeout=cfg.timeout_s, max_retries=cfg.max_retries
        )

    def request_body(self, messages: list[Message], tools: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": to_chat_messages(messages, arguments_as_json=True),
            "tools": tools,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_new_tokens,
            "logprobs": True,
            # vLLM extensions: the sampled ids and the prompt ids, so RL never re-tokenises text.
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
        }

    def generate(self, messages: list[Message], tools: list[dict[str, Any]]) -> PolicyTurn:
        data = self._complete(self.request_body(messages, tools))
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise PolicyError(f"{self.url}: response has no choices[0].message") from None
        usage = data.get("usage") or {}
        content = message.get("content") or ""
        logprob_entries = (choice.get("logprobs") or {}).get("content") or []
        fields: dict[str, Any] = {
            "token_ids": _sampled_ids(choice),
            "prompt_ids": data.get("prompt_token_ids"),
            "logprobs": [float(entry["logprob"]) for entry in logprob_entries] or None,
            "input_tokens": int(usage.get("prompt_tokens", 0)),
            "output_tokens": int(usage.get("completion_tokens", 0)),
        }
        if not message.get("tool_calls"):
            return parse_completion(content, self._ids, **fields)
        calls, error = _openai_tool_calls(message)
        return PolicyTurn(text=content, tool_calls=calls, format_error=error, **fields)

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion through the SDK (vLLM's extensions as extra body fields), as the JSON dict."""
        errors = self._openai
        standard = {
            key: body[key] for key in ("model", "messages", "tools", "temperature", "max_tokens", "logprobs")
        }
        extensions = {key: value for key, value in body.items() if key not in standard}
        try:
            response = self._client.chat.completions.with_raw_response.create(
                **standard, extra_body=extensions
            )
            return json.loads(response.http_response.text)
        except errors.APIStatusError as err:
            detail = err.response.text[:ERROR_BODY_CHARS]
            if err.status_code == 400 and _overflow(detail):
                raise ContextOverflow(f"{self.url}: {detail}") from None
            kind = TransientPolicyError if err.status_code in RETRYABLE_STATUSES else PolicyError
            raise kind(f"{self.url}: HTTP {err.status_code}: {detail}") from None
        except errors.APIConnectionError as err:  # timeouts included, after the SDK's retries
            raise TransientPolicyError(f"{self.url}: request failed: {err}") from None
        except json.JSONDecodeError as err:
            raise PolicyError(f"{self.url}: response is not JSON: {err.msg}") from None


# --------------------------------------------------------------------------------------------------
# Anthropic Messages API
# --------------------------------------------------------------------------------------------------


def anthropic_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI function schemas as Anthropic tool definitions."""
    return [
        {
            "name": t["function"]["name"],
            "description": t["function"]["description"],
            "input_schema": t["function"]["parameters"],
        }
        for t in tools
    ]


def to_anthropic_messages(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system prompt, messages) for the Messages API: tool calls become `tool_use` blocks, observations
    `tool_result` blocks in a user turn; consecutive same-role turns are merged (the API alternates)."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    chat: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        if message.role == "assistant":
            role, blocks = (
                "assistant",
                [{"type": "text", "text": message.content}] if message.content.strip() else [],
            )
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in message.tool_calls
            ]
            blocks = blocks or [{"type": "text", "text": "(empty turn)"}]
        elif message.role == "tool" and message.tool_call_id:
            role = "user"
            blocks = [
                {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}
            ]
        else:
            role, blocks = "user", [{"type": "text", "text": message.content or "(empty)"}]
        if chat and chat[-1]["role"] == role:
            chat[-1]["content"].extend(blocks)
        else:
            chat.append({"role": role, "content": blocks})
    return system, chat


class AnthropicPolicy:
    """Claude acting through the Messages API with tool_use; metered with `PolicyConfig.prices`. No temperature
    is sent: the installed SDK (2.12) no longer takes one, the model's default sampling applies."""

    name = "anthropic"

    def __init__(self, cfg: PolicyConfig, model: str, api_key: str | None = None, client: Any = None) -> None:
        import anthropic

        self.cfg = cfg
        self.model = model
        self._anthropic = anthropic
        self.client = client or anthropic.Anthropic(
            api_key=api_key, base_url=cfg.base_url or None, timeout=cfg.timeout_s, max_retries=cfg.max_retries
        )

    def generate(self, messages: list[Message], tools: list[dict[str, Any]]) -> PolicyTurn:
        system, chat = to_anthropic_messages(messages)
        errors = self._anthropic
        try:
            response = self.client.messages.create(
                model=self.model,
                max_tokens=self.cfg.max_new_tokens,
                system=system,
                messages=chat,
                tools=anthropic_tools(tools),
            )
        except errors.BadRequestError as err:
            if _overflow(str(err)):
                raise ContextOverflow(f"anthropic {self.model}: {err}") from None
            raise PolicyError(f"anthropic {self.model}: {err}") from None
        except errors.APIError as err:
            raise PolicyError(f"anthropic {self.model}: {type(err).__name__}: {err}") from None
        text = "".join(block.text for block in response.content if block.type == "text")
        calls = [
            ToolCall(id=block.id, name=block.name, arguments=dict(block.input))
            for block in response.content
            if block.type == "tool_use"
        ]
        usage = response.usage
        prices = self.cfg.prices
        cost = (
            usage.input_tokens * prices.input_per_mtok + usage.output_tokens * prices.output_per_mtok
        ) / 1e6
        return PolicyTurn(
            text=text,
            tool_calls=calls,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost,
        )
