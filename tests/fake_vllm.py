"""A stand-in for the `vllm` executable (tests put it on PATH as `vllm`): `vllm serve MODEL_DIR --port P
...` serves an OpenAI-compatible endpoint on loopback whose every chat completion is a Qwen2.5
`<tool_call>` of `submit`, the text a served model returns with no server-side tool parser.

It appends its argv (JSON) to $FAKE_VLLM_RECORD, and `$FAKE_VLLM_MODE=crash` makes it print a line and
exit 3 before serving (a server that fails to start)."""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMPLETION = '<tool_call>\n{"name": "submit", "arguments": {}}\n</tool_call>'


class Handler(BaseHTTPRequestHandler):
    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != "/v1/models":
            self.send_error(404)
            return
        self._reply({"object": "list", "data": [{"id": sys.argv[sys.argv.index("--served-model-name") + 1]}]})

    def do_POST(self) -> None:  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or request.get("model") not in self.server.names:
            self.send_error(404, f"no model {request.get('model')!r}")
            return
        message = {"role": "assistant", "content": COMPLETION}
        self._reply(
            {
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 12},
            }
        )

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    argv = sys.argv[1:]
    with open(os.environ["FAKE_VLLM_RECORD"], "a") as record:
        record.write(json.dumps({"argv": argv, "pid": os.getpid()}) + "\n")
    if os.environ.get("FAKE_VLLM_MODE") == "crash":
        print("CUDA error: no kernel image is available", flush=True)
        sys.exit(3)
    assert argv[0] == "serve" and os.path.isdir(argv[1]), argv
    time.sleep(float(os.environ.get("FAKE_VLLM_DELAY_S", "0.5")))  # a server takes a while to load
    server = ThreadingHTTPServer(("127.0.0.1", int(argv[argv.index("--port") + 1])), Handler)
    server.names = {argv[argv.index("--served-model-name") + 1]}
    print("INFO: Application startup complete.", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
