"""A scriptable local HTTP server speaking the Anthropic Messages API and OpenAI chat completions.

Used instead of the real APIs (which cost money and need a network): point the real `anthropic`
SDK at `server.url` (it POSTs to `<base_url>/v1/messages`) or an OpenAI-compatible client at
`server.url + "/v1"` (it POSTs to `.../chat/completions`).

Script it with a queue of canned responses, answered in order whatever the path:

    with MockLLMServer(api_key="test-key") as server:
        server.push(anthropic_text("use a set"), anthropic_error(529, "overloaded_error", "Overloaded"))
        server.push(anthropic_tool_use("bash", {"command": "ls"}))
        ...
        server.requests[0].body["messages"]

Every request is recorded (path, headers with lower-case names, parsed JSON body) before it is
answered. When `api_key` is set, a request must carry it as `Authorization: Bearer <key>` (what
anthropic SDK 2.12 sends) or `x-api-key: <key>`, else it gets a 401 `authentication_error` and no
canned response is consumed. An empty queue answers 400 `invalid_request_error` (not retried by
the SDK) so a test that asks more than it scripted fails loudly instead of hanging on retries.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"
# serve_forever's poll interval: how fast stop() returns (the stdlib default of 0.5 s adds up over a suite).
SHUTDOWN_POLL_S = 0.02

_ids = itertools.count(1)


@dataclass
class Canned:
    """One scripted HTTP answer."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (e.g. `retry-after-ms` to make SDK retries fast)."""
    delay_s: float = 0.0
    """Sleep this long before answering (to provoke client timeouts)."""
    raw: bytes | None = None
    """Send these bytes as the body instead of `body` as JSON (a malformed reply)."""


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: dict[str, Any]
    """Parsed JSON body ({} when empty or not JSON)."""


def anthropic_text(
    text: str, input_tokens: int = 100, output_tokens: int = 20, model: str = "mock-model"
) -> Canned:
    """A Messages API reply with one text block and stop_reason end_turn."""
    return _anthropic_message(
        [{"type": "text", "text": text}], "end_turn", input_tokens, output_tokens, model
    )


def anthropic_tool_use(
    name: str,
    tool_input: dict[str, Any],
    text: str = "",
    tool_use_id: str = "",
    input_tokens: int = 100,
    output_tokens: int = 20,
    model: str = "mock-model",
) -> Canned:
    """A Messages API reply asking for a tool call (optionally preceded by a text block)."""
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    blocks.append(
        {
            "type": "tool_use",
            "id": tool_use_id or f"toolu_{next(_ids):06d}",
            "name": name,
            "input": tool_input,
        }
    )
    return _anthropic_message(blocks, "tool_use", input_tokens, output_tokens, model)


def _anthropic_message(
    content: list[dict[str, Any]], stop_reason: str, input_tokens: int, output_tokens: int, model: str
) -> Canned:
    body = {
        "id": f"msg_{next(_ids):06d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    return Canned(200, body)


def anthropic_error(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> Canned:
    """An Anthropic-style error (529 overloaded_error, 401 authentication_error, 400 invalid_request_error...)."""
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return Canned(status, body, dict(headers or {}))


def malformed_reply(raw: bytes = b'{"id": "msg_1", "type": "mess') -> Canned:
    """A 200 reply whose body is not valid JSON (a proxy or a torn connection garbled it)."""
    return Canned(200, {}, raw=raw)


def openai_text(
    text: str, prompt_tokens: int = 100, completion_tokens: int = 20, model: str = "mock-model"
) -> Canned:
    """An OpenAI chat.completion reply with one assistant message."""
    body = {
        "id": f"chatcmpl-{next(_ids):06d}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return Canned(200, body)


def openai_error(status: int, message: str, error_type: str = "server_error") -> Canned:
    """An OpenAI-style error body."""
    return Canned(status, {"error": {"message": message, "type": error_type, "code": status}})


class MockLLMServer:
    """Loopback HTTP server answering /v1/messages and /v1/chat/completions from a queue."""

    def __init__(self, api_key: str = "") -> None:
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Canned] = deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(SHUTDOWN_POLL_S,), name="mock-llm", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL for the anthropic SDK (`http://127.0.0.1:<port>`)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def push(self, *responses: Canned) -> None:
        """Append canned responses to the queue (answered first in, first out)."""
        with self._lock:
            self._queue.extend(responses)

    @property
    def pending(self) -> int:
        """Canned responses not yet consumed."""
        with self._lock:
            return len(self._queue)

    def start(self) -> MockLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MockLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, request: RecordedRequest) -> Canned:
        with self._lock:
            self.requests.append(request)
            if request.path not in (ANTHROPIC_PATH, OPENAI_PATH):
                return anthropic_error(404, "not_found_error", f"mock: no route {request.path}")
            if self.api_key and not self._authorised(request.headers):
                return anthropic_error(401, "authentication_error", "mock: invalid x-api-key / bearer token")
            if not self._queue:
                return anthropic_error(400, "invalid_request_error", "mock: no canned response queued")
            return self._queue.popleft()

    def _authorised(self, headers: dict[str, str]) -> bool:
        return (
            headers.get("authorization") == f"Bearer {self.api_key}"
            or headers.get("x-api-key") == self.api_key
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    body = {}
                headers = {k.lower(): v for k, v in self.headers.items()}
                canned = server._answer(RecordedRequest("POST", self.path, headers, body))
                if canned.delay_s:
                    time.sleep(canned.delay_s)
                payload = canned.raw if canned.raw is not None else json.dumps(canned.body).encode()
                try:
                    self.send_response(canned.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for name, value in canned.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (timeout test); nothing to answer to.
                    return

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
                return

        return Handler
