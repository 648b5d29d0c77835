"""protege.evaluate.serving: the real start/wait/stop code path against a fake `vllm` on PATH (tests/fake_vllm.py)
that serves an OpenAI-compatible endpoint on loopback."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from protege.config import load_config
from protege.evaluate.serving import SERVED_NAME, ServeError, served_policy

FAKE = Path(__file__).with_name("fake_vllm.py")


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`vllm` on PATH runs tests/fake_vllm.py; returns the file its invocations are recorded in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable = bin_dir / "vllm"
    executable.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    executable.chmod(0o755)
    record = tmp_path / "vllm-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    return record


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "rl2-model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.is_file() else []


def serving_cfg(*extra: str):
    return load_config("local", overrides=["eval.serve=vllm", "eval.serve_stop_timeout_s=5", *extra])


def answers(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_the_server_serves_the_model_for_the_block_and_is_stopped_after(fake_vllm, model_dir, tmp_path):
    from protege.agent.api_policies import OpenAIChatPolicy
    from protege.trajectory import Message

    cfg = serving_cfg()
    with served_policy(cfg, str(model_dir), None, tmp_path / "eval") as served:
        policy = served.agent.policy
        assert (policy.backend, policy.model) == ("openai", SERVED_NAME)
        assert policy.base_url.startswith("http://127.0.0.1:") and answers(policy.base_url)
        turn = OpenAIChatPolicy(policy, policy.model).generate(
            [Message(role="user", content="fix it", provenance="task")], []
        )
        # Parsed from the text by the training parser (no server-side tool parser).
        assert [(call.name, call.arguments) for call in turn.tool_calls] == [("submit", {})]
    [call] = calls(fake_vllm)
    argv = call["argv"]
    assert argv[:2] == ["serve", str(model_dir)] and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--served-model-name") + 1] == SERVED_NAME
    assert argv[argv.index("--max-model-len") + 1] == str(cfg.agent.policy.context_window)
    assert "--tool-call-parser" not in argv and "--enable-auto-tool-choice" not in argv
    assert not answers(policy.base_url)
    with pytest.raises(ProcessLookupError):
        os.kill(call["pid"], 0)
    assert "Application startup complete" in (tmp_path / "eval" / "vllm-serve.log").read_text()


def test_the_server_is_stopped_when_the_evaluation_raises(fake_vllm, model_dir, tmp_path):
    with (
        pytest.raises(RuntimeError, match="boom"),
        served_policy(serving_cfg(), str(model_dir), None, tmp_path) as served,
    ):
        base_url = served.agent.policy.base_url
        raise RuntimeError("boom")
    assert not answers(base_url)
    with pytest.raises(ProcessLookupError):
        os.kill(calls(fake_vllm)[0]["pid"], 0)


def test_a_server_that_exits_before_serving_is_a_clear_error(fake_vllm, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "crash")
    with pytest.raises(ServeError, match="vllm serve exited with code 3 before serving") as err:
        with served_policy(serving_cfg(), str(model_dir), None, tmp_path):
            pytest.fail("the block must not run")
    assert "CUDA error: no kernel image is available" in str(err.value)


def test_a_server_that_is_not_ready_in_time_is_stopped(fake_vllm, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_DELAY_S", "30")
    cfg = serving_cfg("eval.serve_start_timeout_s=1")
    with pytest.raises(ServeError, match=r"not ready at http://127.0.0.1:\d+/v1 after 1 s"):
        with served_policy(cfg, str(model_dir), None, tmp_path):
            pytest.fail("the block must not run")
    with pytest.raises(ProcessLookupError):
        os.kill(calls(fake_vllm)[0]["pid"], 0)


def test_a_missing_vllm_is_named(model_dir, tmp_path):
    cfg = serving_cfg(f"eval.vllm_executable={tmp_path / 'no-vllm'}")
    with pytest.raises(ServeError, match="eval.serve=vllm: cannot run '.*no-vllm'"):
        with served_policy(cfg, str(model_dir), None, tmp_path):
            pytest.fail("the block must not run")


def test_in_process_serving_starts_nothing(fake_vllm, model_dir, tmp_path):
    cfg = load_config("local")
    assert cfg.eval.serve == "in_process" and load_config("cluster").eval.serve == "vllm"
    with served_policy(cfg, str(model_dir), None, tmp_path) as served:
        assert served is cfg
    assert calls(fake_vllm) == []
