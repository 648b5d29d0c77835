"""What a comparison compares: the variants of the acting agent and the task set's exclusion list.

A variants file (YAML or JSON) names each variant and how to get its results:

    reference: full                   # paired differences are against this variant (default: the first)
    expert_alone: expert-alone        # the cost ratio's numerator (default: compare.expert_alone)
    models: {base: tiny, sft: RUN/sft/model, rl1: RUN/rl1/model, rl2: RUN/rl2/model}   # the standard set
    variants:                         # any others, each a config of the same eval phase
      - name: gold-forced-k3
        model: script:gold            # recorded model name
        script: gold                  # scripted policy only: gold, empty or a script file
        overrides: [agent.policy.backend=scripted, agent.forced_ask.mode=interval]
      - name: last-week
        results: .protege/runs/X/eval # gathered, not run: an eval results directory

`models` expands to the standard set of issue 19 (`standard_variants`): each given stage with and without
`ask_expert`, the expert acting alone, and the full model (rl2, else the last stage given) with forced calls
every k steps and at random steps. An exclusion list maps instance ids to the reason each is excluded
(for instances whose tests reject correct fixes); a reason is required.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from protege.config import ProtegeConfig

STAGES = ("base", "sft", "rl1", "rl2")
STAGE_NAMES = {"base": "base", "sft": "sft", "rl1": "sft+rl1", "rl2": "full"}
"""Row names of the standard set: the paper's names for the training stages."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class SpecError(ValueError):
    """A variants file or exclusion list is malformed; the message names the file and the bad item."""


@dataclass
class Variant:
    """One row of the table: an eval run of one model under one config (or gathered results)."""

    name: str
    model: str = ""
    """Policy model (a local dir, s3:// URI, HF id, `tiny`), or the name recorded for a non-model policy."""
    overrides: list[str] = field(default_factory=list)
    """Dotted config overrides applied on top of the comparison's config."""
    script: str | None = None
    """Scripted policy only: gold, empty or a script file."""
    results: str = ""
    """An existing eval results directory to gather instead of running."""


@dataclass
class Spec:
    variants: list[Variant]
    reference: str
    expert_alone: str


def expert_alone_overrides(cfg: ProtegeConfig) -> list[str]:
    """The expert model acting alone, with no protégé and no ask_expert: locally the offline oracle
    teacher, else the expert's own backend and model as the policy."""
    if cfg.expert.backend == "oracle":
        return ["agent.policy.backend=oracle", "agent.ask_expert=false"]
    return [
        f"agent.policy.backend={cfg.expert.backend}",
        f"agent.policy.model={cfg.expert.model}",
        "agent.ask_expert=false",
        "eval.serve=in_process",
    ]


def standard_variants(cfg: ProtegeConfig, models: dict[str, str]) -> list[Variant]:
    """Issue 19's set: each given stage with ask_expert on and off, the expert alone, and the last stage
    with forced calls every `compare.forced_every_k` steps and at random steps (`compare.random_rate`)."""
    unknown = sorted(set(models) - set(STAGES))
    if unknown:
        raise SpecError(f"models: unknown stage(s) {', '.join(unknown)} (stages: {', '.join(STAGES)})")
    variants: list[Variant] = []
    if not models:
        return variants
    for stage in (s for s in STAGES if s in models):
        name = STAGE_NAMES[stage]
        variants.append(Variant(name, models[stage]))
        variants.append(Variant(f"{name}-no-ask", models[stage], ["agent.ask_expert=false"]))
    variants.append(
        Variant(cfg.compare.expert_alone, f"expert:{cfg.expert.model}", expert_alone_overrides(cfg))
    )
    last = next((s for s in reversed(STAGES) if s in models), None)
    if last is not None:
        k, rate = cfg.compare.forced_every_k, cfg.compare.random_rate
        variants.append(
            Variant(
                f"{STAGE_NAMES[last]}-forced-k{k}",
                models[last],
                ["agent.forced_ask.mode=interval", f"agent.forced_ask.every_k_steps={k}"],
            )
        )
        variants.append(
            Variant(
                f"{STAGE_NAMES[last]}-random-p{rate:g}",
                models[last],
                ["agent.forced_ask.mode=random", f"agent.forced_ask.rate={rate}"],
            )
        )
    return variants


def read_data(path: Path) -> Any:
    """A YAML or JSON file's content; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"{path}: cannot read: {err.strerror}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SpecError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None


def _variant(item: Any, where: str) -> Variant:
    if not isinstance(item, dict):
        raise SpecError(f"{where}: expected a mapping with name and model or results, got {item!r}")
    unknown = sorted(set(item) - {"name", "model", "overrides", "script", "results"})
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: name, model, overrides, script, results)"
        )
    name = str(item.get("name", ""))
    if not _NAME.match(name):
        raise SpecError(
            f"{where}: name {name!r} must be letters, digits and _.+- (it names a directory and a run)"
        )
    overrides = item.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise SpecError(f"{where} ({name}): overrides must be a list of 'dotted.key=value' strings")
    if not item.get("model") and not item.get("results"):
        raise SpecError(
            f"{where} ({name}): give `model` (run it) or `results` (gather an eval results directory)"
        )
    script = item.get("script")
    return Variant(
        name,
        str(item.get("model") or ""),
        list(overrides),
        str(script) if script else None,
        str(item.get("results") or ""),
    )


def load_spec(path: str | Path, cfg: ProtegeConfig) -> Spec:
    """The variants file at `path` (see the module docstring), validated; names are unique."""
    path = Path(path)
    data = read_data(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: top level must be a mapping with `models` and/or `variants`")
    unknown = sorted(set(data) - {"reference", "expert_alone", "models", "variants"})
    if unknown:
        raise SpecError(
            f"{path}: unknown key(s) {', '.join(unknown)} (known: reference, expert_alone, models, variants)"
        )
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise SpecError(f"{path}: models must map stages ({', '.join(STAGES)}) to model paths")
    try:
        variants = standard_variants(cfg, {str(k): str(v) for k, v in models.items()})
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None
    items = data.get("variants") or []
    if not isinstance(items, list):
        raise SpecError(f"{path}: variants must be a list")
    variants += [_variant(item, f"{path}: variants[{i}]") for i, item in enumerate(items)]
    if not variants:
        raise SpecError(f"{path}: no variant (give `models` or `variants`)")
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"{path}: variant name(s) used twice: {', '.join(duplicates)}")
    reference = str(data.get("reference") or cfg.compare.reference or names[0])
    if reference not in names:
        raise SpecError(f"{path}: reference {reference!r} is not a variant (variants: {', '.join(names)})")
    expert_alone = str(data.get("expert_alone") or cfg.compare.expert_alone)
    return Spec(variants, reference, expert_alone)


def load_exclusions(path: str | Path, instance_ids: set[str] | None = None) -> dict[str, str]:
    """instance_id -> reason from an exclusion list: a mapping, or a list of {instance_id, reason}. Every
    entry needs a non-empty reason; with `instance_ids`, every id must be in the task set."""
    path = Path(path)
    data = read_data(path)
    if isinstance(data, dict):
        items = [{"instance_id": k, "reason": v} for k, v in data.items()]
    elif isinstance(data, list):
        items = data
    else:
        raise SpecError(f"{path}: expected instance_id -> reason, or a list of {{instance_id, reason}}")
    found: dict[str, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("instance_id"):
            raise SpecError(f"{path}: entry {index}: expected {{instance_id, reason}}, got {item!r}")
        instance, reason = str(item["instance_id"]), str(item.get("reason") or "").strip()
        if not reason:
            raise SpecError(f"{path}: {instance}: no reason given (every exclusion needs one)")
        if instance_ids is not None and instance not in instance_ids:
            raise SpecError(f"{path}: {instance}: not an instance of the task set")
        found[instance] = reason
    return found
