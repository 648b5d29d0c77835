"""The tiny build's copy warm start (protege.tiny_warmup): both phases' tasks ask exactly for copying from the
context, FAR's from further back than NEAR's, training is seeded and reported, and a build with it records it in
the manifest. That it teaches copying (loss from ln(vocab) to near 0, then at 400-token offsets) is measured at
the tiny shape, not here: it takes 20 minutes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from protege.config import TinyModelConfig
from protege.model import build_tiny_model, read_manifest
from protege.tiny_warmup import FAR, LONG, NEAR, CopyPhase, _batch, copy_loss, copy_warm_start
from tests.test_model import TINY, corpus  # noqa: F401  (the module-scoped corpus fixture)


@pytest.mark.parametrize("phase", [NEAR, FAR, LONG], ids=lambda p: p.name)
def test_every_labelled_token_is_a_copy_of_an_earlier_one(phase: CopyPhase):
    generator = torch.Generator().manual_seed(3)
    for step in range(20):
        ids, labels = _batch(generator, 50, phase, progress=step / 19)
        assert ids.shape[0] == phase.batch and ids.min() >= 0 and ids.max() < 50
        labelled = labels != -100
        run = int(labelled[0].sum()) + 1  # the repeat's first token is not labelled
        assert phase.run_tokens[0] <= run <= phase.run_tokens[1]
        assert ids.shape[1] <= 2 * run + phase.prefix_tokens[1] + phase.gap_tokens[1]
        assert labelled.all(dim=0)[-run + 1 :].all() and not labelled[:, : -run + 1].any()
        # ... and it is the token `run + gap` places back: the first run, repeated
        repeat = ids[:, -run:]
        assert any(
            torch.equal(ids[:, start : start + run], repeat) for start in range(ids.shape[1] - 2 * run + 1)
        )
        assert torch.equal(labels[:, -run + 1 :], repeat[:, 1:])


def test_each_phase_reaches_further_back_and_long_grows_into_its_length():
    # NEAR alone is learnt as "look back by up to 80 tokens"; FAR's offsets leave only a lookup by content;
    # LONG carries it to trajectory lengths, reached gradually.
    most = lambda p: p.run_tokens[1] + p.gap_tokens[1]  # noqa: E731
    assert most(FAR) >= 4 * most(NEAR) and FAR.prefix_tokens[1] > NEAR.prefix_tokens[1]
    assert LONG.prefix_tokens[1] >= 2000 and abs(NEAR.share + FAR.share + LONG.share - 1) < 1e-9
    generator = torch.Generator().manual_seed(0)
    longest = lambda progress: max(  # noqa: E731
        _batch(generator, 50, LONG, progress)[0].shape[1] for _ in range(30)
    )
    assert longest(0.0) <= LONG.prefix_tokens[0] + 2 * LONG.run_tokens[1] + LONG.gap_tokens[1]
    assert longest(1.0) > 1500


def test_sequences_are_cut_to_the_model_positions():
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        ids, labels = _batch(generator, 50, LONG, progress=1.0, longest=256)
        run = int((labels[0] != -100).sum()) + 1
        assert ids.shape[1] <= 256 and torch.equal(labels[:, -run + 1 :], ids[:, -run + 1 :])


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
    assert report["phase_steps"] == {"near": 2, "far": 1, "long": 1}
    assert 0 < report["last_loss"] < 10 and 0 < report["first_loss"] < 10
    assert lines == ["tiny: copy warm start step 4/4 (long) loss " + lines[0].split("loss ")[1]]
    assert "ETA 0s" in lines[0]
    # Probes longer than the model's 256 positions are left out rather than measured past them.
    assert set(report["copy_loss_by_context"]) == {"short"}
    assert report["copy_loss_by_context"]["short"] == round(copy_loss(first, 64, 0, 50, seed=2), 4)


def test_a_build_with_the_warm_start_records_it_and_changes_only_the_weights(tmp_path: Path, corpus: Path):  # noqa: F811
    plain = build_tiny_model(TINY, tmp_path / "plain", [corpus])
    warm = build_tiny_model(TINY.model_copy(update={"copy_warmup_steps": 2}), tmp_path / "warm", [corpus])
    assert "copy_warm_start" not in read_manifest(plain)
    assert read_manifest(warm)["copy_warm_start"]["steps"] == 2
    assert (warm / "tokenizer.json").read_bytes() == (plain / "tokenizer.json").read_bytes()
    assert (warm / "model.safetensors").read_bytes() != (plain / "model.safetensors").read_bytes()
    assert TinyModelConfig().copy_warmup_steps == 0


def test_only_warm_started_builds_are_keyed_by_the_warm_start_recipe(monkeypatch):
    from protege import tiny_warmup
    from protege.model import tiny_digest

    files = [("a.py", "x = 1\n")]
    warm = TINY.model_copy(update={"copy_warmup_steps": 2})
    before = tiny_digest(TINY, files), tiny_digest(warm, files)
    monkeypatch.setattr(tiny_warmup, "RECIPE", tiny_warmup.RECIPE + 1)
    after = tiny_digest(TINY, files), tiny_digest(warm, files)
    assert after[0] == before[0] and after[1] != before[1]
