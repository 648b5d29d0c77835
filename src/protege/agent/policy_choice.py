"""Picking the policy backend named by `agent.policy.backend`, through the literal dict `POLICY_BUILDERS`
(the backends: `policies.py` in process, `api_policies.py` behind an API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protege.agent.policies import ScriptedPolicy, TransformersPolicy
from protege.config import ProtegeConfig


def _scripted(cfg: ProtegeConfig, script: str | None, store: Any) -> ScriptedPolicy:
    if not script:
        raise ValueError("the scripted policy needs a script file (--script FILE.json)")
    return ScriptedPolicy.from_file(script)


def _transformers(cfg: ProtegeConfig, script: str | None, store: Any) -> TransformersPolicy:
    from protege.model import load_model_and_tokenizer, resolve_model

    path = resolve_model(cfg.model.base, Path(cfg.model.cache_dir), store, tiny=cfg.model.tiny)
    model, tokenizer = load_model_and_tokenizer(
        path, cfg.model.dtype, cfg.device, cfg.model.attn_implementation
    )
    return TransformersPolicy(model.eval(), tokenizer, cfg.agent.policy, model_id=cfg.model.base)


def _openai(cfg: ProtegeConfig, script: str | None, store: Any) -> Any:
    from protege.agent.api_policies import OpenAIChatPolicy

    return OpenAIChatPolicy(cfg.agent.policy, cfg.agent.policy.model or cfg.model.base)


def _anthropic(cfg: ProtegeConfig, script: str | None, store: Any) -> Any:
    from protege.agent.api_policies import AnthropicPolicy

    return AnthropicPolicy(cfg.agent.policy, cfg.agent.policy.model or cfg.model.base)


def _oracle(cfg: ProtegeConfig, script: str | None, store: Any) -> Any:
    raise ValueError(
        "the oracle policy acts on one task it knows the fix of: the eval phase builds one per episode"
    )


POLICY_BUILDERS = {
    "scripted": _scripted,
    "transformers": _transformers,
    "openai": _openai,
    "anthropic": _anthropic,
    "oracle": _oracle,
}


def make_policy(cfg: ProtegeConfig, script: str | None = None, store: Any = None) -> Any:
    """The policy named by `cfg.agent.policy.backend` (`script`: the JSON file the scripted backend replays;
    `store`: the artifact store an `s3://` model is fetched from)."""
    return POLICY_BUILDERS[cfg.agent.policy.backend](cfg, script, store)
