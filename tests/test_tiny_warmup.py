"""The tiny build's copy warm start (protege.tiny_warmup): its task asks exactly for copying from the context,
training is seeded and reported, and a build with it records it in the manifest. That it teaches copying
(loss from ln(vocab) to near 0 in about 1,500 steps) is measured by the learning run, not here: it takes
minutes."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from protege.config import TinyModelConfig
from protege.model import build_tiny_model, read_manifest
from protege.tiny_warmup import GAP_TOKENS, RUN_TOKENS, _batch, copy_warm_start
from tests.test_model import TINY, corpus  # noqa: F401  (the module-scoped corpus fixture)


def test_every_labelled_token_is_a_copy_of_an_earlier_one():
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        ids, labels = _batch(generator, vocab=50)
        assert ids.min() >= 0 and ids.max() < 50
        labelled = labels != -100
        run = int(labelled[0].sum()) + 1  # the repeat's first token is not labelled
        assert RUN_TOKENS[0] <= run <= RUN_TOKENS[1]
        assert ids.shape[1] <= 2 * run + 2 * GAP_TOKENS[1]
        assert labelled.all(dim=0)[-run + 1 :].all() and not labelled[:, : -run + 1].any()
        # ... and it is the token `run + gap` places back: the first run, repeated
        repeat = ids[:, -run:]
        assert any(
            torch.equal(ids[:, start : start + run], repeat) for start in range(ids.shape[1] - 2 * run + 1)
        )
        assert torch.equal(labels[:, -run + 1 :], repeat[:, 1:])


def _model(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    return Qwen2ForCausalLM(config)


def test_warm_start_is_seeded_reported_and_logged_with_an_eta():
    lines: list[str] = []
    first, second, reseeded = _model(), _model(), _model()
    report = copy_warm_start(first, 64, steps=4, seed=1, log=lines.append)
    copy_warm_start(second, 64, steps=4, seed=1, log=lambda _: None)
    copy_warm_start(reseeded, 64, steps=4, seed=2, log=lambda _: None)
    weights = [m.model.embed_tokens.weight for m in (first, second, reseeded)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    assert not torch.equal(weights[0], _model().model.embed_tokens.weight)  # it trained
    assert report["steps"] == 4 and report["chance_loss"] == round(math.log(64), 4)
    assert 0 < report["last_loss"] < 10 and 0 < report["first_loss"] < 10
    assert lines == ["tiny: copy warm start step 4/4 loss " + lines[0].split("loss ")[1]]
    assert "ETA 0s" in lines[0]


def test_a_build_with_the_warm_start_records_it_and_changes_only_the_weights(tmp_path: Path, corpus: Path):  # noqa: F811
    plain = build_tiny_model(TINY, tmp_path / "plain", [corpus])
    warm = build_tiny_model(TINY.model_copy(update={"copy_warmup_steps": 2}), tmp_path / "warm", [corpus])
    assert "copy_warm_start" not in read_manifest(plain)
    assert read_manifest(warm)["copy_warm_start"]["steps"] == 2
    assert (warm / "tokenizer.json").read_bytes() == (plain / "tokenizer.json").read_bytes()
    assert (warm / "model.safetensors").read_bytes() != (plain / "model.safetensors").read_bytes()
    assert TinyModelConfig().copy_warmup_steps == 0
