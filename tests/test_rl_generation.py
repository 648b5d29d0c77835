"""RL turn generation: exact sampling logprobs from the in-process model, batching of concurrent rollout turns,
and the vLLM backends at their API boundary (vLLM itself needs a GPU)."""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path

import pytest

from protege.rl.generation import (
    BatchingGenerator,
    HFGenerator,
    make_generator,
    vllm_colocate_backend,
    vllm_server_backend,
)
from tests.rl_helpers import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from protege.model import load_model_and_tokenizer

    tmp = tmp_path_factory.mktemp("tiny")
    return load_model_and_tokenizer(build_tiny(tmp / "model", tmp / "corpus"), "float32", "cpu")


def test_hf_generator_logprobs_are_the_sampling_distribution_of_the_generated_ids(tiny):
    import torch

    model, tokenizer = tiny
    model.train()
    prompt = tokenizer.encode("<|im_start|>user\nfix the bug<|im_end|>\n<|im_start|>assistant\n")
    torch.manual_seed(0)
    ids, logprobs = HFGenerator(model, tokenizer, temperature=0.7).generate(prompt, max_new_tokens=12)
    assert 0 < len(ids) <= 12 and len(logprobs) == len(ids)
    assert model.training  # restored after generation
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1] / 0.7
    rescored = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
    assert rescored.tolist() == pytest.approx(logprobs, abs=1e-4)


def test_hf_generator_ends_a_turn_when_its_rollout_is_stopped(tiny):
    model, tokenizer = tiny
    stop = threading.Event()
    stop.set()
    ids, logprobs = HFGenerator(model, tokenizer, 1.0).generate(tokenizer.encode("hello"), 50, stop=stop)
    assert len(ids) == len(logprobs) == 1  # stopped after the first token, not 50


def test_concurrent_turns_are_batched_and_each_caller_gets_its_own():
    seen: list[list[list[int]]] = []

    def backend(prompts, limits):
        seen.append(prompts)
        return [([p[0] * 10] * limit, [-0.5] * limit) for p, limit in zip(prompts, limits, strict=True)]

    generator = BatchingGenerator(backend, max_batch=4, window_s=0.5)
    results: dict[int, tuple] = {}
    threads = [
        threading.Thread(target=lambda n=n: results.update({n: generator.generate([n], n + 1)}))
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: ([n * 10] * (n + 1), [-0.5] * (n + 1)) for n in range(4)}
    assert max(generator.batch_sizes) > 1 and sum(generator.batch_sizes) == 4


def test_a_backend_error_reaches_every_caller_of_the_batch():
    def broken(prompts, limits):
        raise RuntimeError("CUDA out of memory")

    generator = BatchingGenerator(broken, max_batch=2, window_s=0.0)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        generator.generate([1, 2], 5)
    short = BatchingGenerator(lambda prompts, limits: [], max_batch=1, window_s=0.0)
    with pytest.raises(RuntimeError, match="returned 0 turns for 1 prompts"):
        short.generate([1], 3)


def _logprob(value: float):
    return types.SimpleNamespace(logprob=value, rank=1)


def test_colocate_backend_sends_token_prompts_with_plain_sampling_and_reads_the_sampled_logprobs(monkeypatch):
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.SamplingParams = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    calls = []

    class LLM:
        def generate(self, prompts, sampling_params, use_tqdm):
            calls.append((prompts, sampling_params))
            sample = types.SimpleNamespace(
                token_ids=(7, 8), logprobs=[{7: _logprob(-0.1), 3: _logprob(-2.0)}, {8: _logprob(-0.2)}]
            )
            return [types.SimpleNamespace(outputs=[sample]) for _ in prompts]

    turns = vllm_colocate_backend(LLM(), temperature=0.9)([[1, 2], [3]], [5, 6])
    assert turns == [([7, 8], [-0.1, -0.2])] * 2
    prompts, params = calls[0]
    assert prompts == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    assert [p["max_tokens"] for p in params] == [5, 6]
    assert all(
        p["temperature"] == 0.9 and p["top_k"] == -1 and p["top_p"] == 1.0 and p["logprobs"] == 0
        for p in params
    )


def test_server_backend_uses_one_request_and_cuts_each_turn_to_its_limit():
    class Client:
        def generate(self, **kwargs):
            self.kwargs = kwargs
            return {
                "completion_ids": [[1, 2, 3], [4, 5, 6]],
                "logprobs": [[[-1.0], [-2.0], [-3.0]], [[-4.0], [-5.0], [-6.0]]],
            }

    client = Client()
    turns = vllm_server_backend(client, temperature=1.0)([[9], [9, 9]], [3, 2])
    assert turns == [([1, 2, 3], [-1.0, -2.0, -3.0]), ([4, 5], [-4.0, -5.0])]
    assert (
        client.kwargs["prompts"] == [[9], [9, 9]]
        and client.kwargs["max_tokens"] == 3
        and client.kwargs["n"] == 1
    )


def test_make_generator_picks_the_engine_trl_runs(tiny, tmp_path: Path):
    model, tokenizer = tiny
    plain = types.SimpleNamespace(
        use_vllm=False, model=model, accelerator=types.SimpleNamespace(unwrap_model=lambda m: m)
    )
    assert isinstance(make_generator(plain, tokenizer, 1.0, 4, 0.01), HFGenerator)
    engine = types.SimpleNamespace(mode="colocate", llm=object())
    colocated = types.SimpleNamespace(use_vllm=True, vllm_generation=engine)
    assert isinstance(make_generator(colocated, tokenizer, 1.0, 4, 0.01), BatchingGenerator)
