"""Image references come from one place (protege.image_refs): the pipeline config's defaults, what
`make images` tags (`protege docker images`) and `protege compile --images TAG` all agree."""

from __future__ import annotations

import re

import pytest

from protege.config import PipelineConfig
from protege.image_refs import IMAGE_NAMES, image_ref


def test_pipeline_defaults_are_the_release_refs():
    cfg = PipelineConfig()
    assert (cfg.agent_image, cfg.trainer_image) == (image_ref("agent"), image_ref("trainer"))
    assert image_ref("agent", "abc") == "ghcr.io/protege-ai/protege-agent:abc"


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="unknown image kind 'gpu'"):
        image_ref("gpu")


def test_make_images_builds_every_kind_with_the_sha_tag(monkeypatch):
    import protege.docker_engine as engine

    built = []
    monkeypatch.setattr(engine, "git_sha", lambda: "f" * 40)
    monkeypatch.setattr(
        engine, "_build_one", lambda kind, sha, base, args, log: built.append(image_ref(kind, sha))
    )
    engine.build_images(list(IMAGE_NAMES), "base:1", {}, log=lambda line: None)
    assert built == [image_ref("agent", "f" * 40), image_ref("trainer", "f" * 40)]


def test_compile_with_images_tag_points_every_step_at_that_tag(tmp_path):
    from protege.pipeline.compile import compile_pipeline

    text = compile_pipeline(tmp_path / "p.yaml", images_tag="deadbeef").read_text()
    images = set(re.findall(r"^\s+image: (\S+)$", text, re.MULTILINE))
    assert images == {image_ref("agent", "deadbeef"), image_ref("trainer", "deadbeef")}
