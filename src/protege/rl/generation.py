"""Turn generation for RL rollouts: many episode threads, one generation engine.

Every generator samples one assistant turn continuing a token sequence and returns (generated ids, the
logprob of each under the sampling distribution: softmax(logits / temperature), no top-k/top-p, no
repetition penalty, so the distribution sampled from is the policy trl trains).

- `HFGenerator`: the model being trained, in this process (CPU, or one GPU without vLLM); one call at a time.
- `BatchingGenerator` + `vllm_colocate_backend` / `vllm_server_backend`: the rollout threads' requests that
  arrive within `rl.generation_batch_window_s` of each other go to vLLM as one batch. The engine is used
  directly (the colocated `LLM`, or an HTTP client of `trl vllm-serve`), not through trl's batch-of-the-step
  wrapper, whose collectives (gather/broadcast across ranks) must not be entered from rollout threads.
  trl still syncs the weights into vLLM before each step's rollouts.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Turn = tuple[list[int], list[float]]
Backend = Callable[[list[list[int]], list[int]], list[Turn]]
"""(prompts, max_new_tokens per prompt) -> one (ids, logprobs) per prompt, in order."""


class Generator(Protocol):
    """Samples one assistant turn continuing `prompt_ids`; returns (generated ids, their logprobs). `stop`, when
    set while the turn is being generated, may end it early (the rollout it belongs to has timed out)."""

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int, stop: threading.Event | None = None
    ) -> Turn: ...


class HFGenerator:
    """Generation with the model being trained. One call at a time: the model is shared by every rollout
    thread, and it is put in eval mode only for the call (dropout off, as trl trains with dropout disabled)."""

    def __init__(self, model: Any, tokenizer: Any, temperature: float) -> None:
        self.model, self.tokenizer, self.temperature = model, tokenizer, temperature
        self.lock = threading.Lock()

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int, stop: threading.Event | None = None
    ) -> Turn:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        from protege.agent.policies import generated_logprobs

        class Stopped(StoppingCriteria):
            # A timed-out rollout's turn ends at the next token instead of holding the shared model.
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop is not None and stop.is_set(), dtype=torch.bool)

        with self.lock, torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            try:
                input_ids = torch.tensor([prompt_ids], device=self.model.device)
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=True,
                    temperature=self.temperature,
                    top_k=0,
                    top_p=1.0,
                    repetition_penalty=1.0,
                    return_dict_in_generate=True,
                    output_logits=True,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    stopping_criteria=StoppingCriteriaList([Stopped()]),
                )
            finally:
                self.model.train(was_training)
        return generated_logprobs(out, len(prompt_ids), self.temperature)


@dataclass
class _Request:
    prompt: list[int]
    max_new_tokens: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Turn | None = None
    error: BaseException | None = None


class BatchingGenerator:
    """A Generator over a batch `backend`: requests from concurrent callers that arrive within `window_s` of
    the first (at most `max_batch`) are served by one backend call. A backend error fails that batch's calls."""

    def __init__(self, backend: Backend, max_batch: int, window_s: float) -> None:
        self.backend, self.max_batch, self.window_s = backend, max_batch, window_s
        self.requests: queue.Queue[_Request] = queue.Queue()
        self.batch_sizes: list[int] = []
        threading.Thread(target=self._serve, name="rl-generation", daemon=True).start()

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int, stop: threading.Event | None = None
    ) -> Turn:
        """`stop` is not used: one turn of a batch is short, and vLLM finishes the batch together."""
        request = _Request(list(prompt_ids), max_new_tokens)
        self.requests.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _collect(self) -> list[_Request]:
        batch = [self.requests.get()]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self.requests.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _serve(self) -> None:
        while True:
            batch = self._collect()
            self.batch_sizes.append(len(batch))
            try:
                results = self.backend([r.prompt for r in batch], [r.max_new_tokens for r in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"generation backend returned {len(results)} turns for {len(batch)} prompts"
                    )
                for request, result in zip(batch, results, strict=True):
                    request.result = result
            except Exception as err:  # noqa: BLE001 - handed to every caller of the batch
                for request in batch:
                    request.error = err
            finally:
                for request in batch:
                    request.done.set()


def _sampled_logprobs(ids: list[int], logprobs: list[dict[int, Any]] | None) -> list[float]:
    """vLLM returns, per position, {token id: Logprob}; the sampled id is always among them."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs (logprobs=0 was requested)")
    return [float(position[token].logprob) for token, position in zip(ids, logprobs, strict=True)]


def vllm_colocate_backend(llm: Any, temperature: float) -> Backend:
    """Batches on the colocated vLLM `LLM` (trl's `trainer.vllm_generation.llm`)."""

    def generate(prompts: list[list[int]], max_new_tokens: list[int]) -> list[Turn]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=1.0,
                top_k=-1,
                min_p=0.0,
                repetition_penalty=1.0,
                max_tokens=limit,
                logprobs=0,
            )
            for limit in max_new_tokens
        ]
        outputs = llm.generate(
            [{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False
        )
        turns = []
        for output in outputs:
            sample = output.outputs[0]
            ids = list(sample.token_ids)
            turns.append((ids, _sampled_logprobs(ids, sample.logprobs)))
        return turns

    return generate


def vllm_server_backend(client: Any, temperature: float) -> Backend:
    """Batches on a `trl vllm-serve` server through trl's `VLLMClient` (HTTP; safe from any rank or thread)."""

    def generate(prompts: list[list[int]], max_new_tokens: list[int]) -> list[Turn]:
        out = client.generate(
            prompts=prompts,
            n=1,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            min_p=0.0,
            repetition_penalty=1.0,
            max_tokens=max(max_new_tokens),
            logprobs=0,
        )
        turns = []
        for ids, logprobs, limit in zip(out["completion_ids"], out["logprobs"], max_new_tokens, strict=True):
            # One request per batch means one max_tokens; a prompt near its context limit keeps only its share.
            kept = list(ids)[:limit]
            turns.append((kept, [float(lp[0]) for lp in logprobs][: len(kept)]))
        return turns

    return generate


def make_generator(
    trainer: Any, tokenizer: Any, temperature: float, max_batch: int, window_s: float
) -> Generator:
    """The generator for a trainer: batched vLLM when trl runs vLLM, else the training model in process."""
    if not getattr(trainer, "use_vllm", False):
        return HFGenerator(trainer.accelerator.unwrap_model(trainer.model), tokenizer, temperature)
    engine = trainer.vllm_generation
    if engine.mode == "colocate":
        backend = vllm_colocate_backend(engine.llm, temperature)
    else:
        from trl.generation.vllm_client import VLLMClient

        client = getattr(engine, "vllm_client", None) or VLLMClient(
            base_url=trainer.args.vllm_server_base_url
        )
        backend = vllm_server_backend(client, temperature)
    return BatchingGenerator(backend, max_batch, window_s)
