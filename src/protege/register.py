"""Phase register: version the final checkpoint in the MLflow registry and gate the `champion` alias.

The final checkpoint (already in the artifact store at an s3:// URI, and already an EXTERNAL LoggedModel of
the phase that trained it: rl2's in the pipeline) becomes a new version of `tracking.registered_model`
whose source is that LoggedModel itself (a model no run logged gets one made by the nested `register`
run), tagged with its lineage (KFP run,
pipeline version, git commit, image digests, base model, dataset digests, expert model, reward-config
hash, eval report URI, eval-set digest, Pass@1). The version gets the alias `champion` only when `decide`
says so: it resolved at least one eval instance (Pass@1 > 0: a run that resolves nothing is never
champion), Pass@1 clears the baseline, which is `register.pass_at_1_floor` when configured and otherwise
the current champion's Pass@1 measured on the same eval set (same eval-set digest), and, when
`register.require_not_below_champion`, is not below that champion's either; with `register.beat_baseline`
it must also exceed that comparison variant's latest Pass@1 on the same eval set. A refused version stays
registered, with the reason in the tag `protege.promotion`.

Simplification: one metric (Pass@1) decides; its confidence interval is reported by eval, not used here.
Runs inside the pipeline's `register` step (components/register); `protege lineage MODEL@champion` reads
the result back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protege.config import ProtegeConfig

PHASE = "register"
CHAMPION = "champion"
TAG_PASS_AT_1 = "protege.pass_at_1"
TAG_EVAL_SET = "protege.eval_set_digest"
TAG_EVAL_REPORT = "protege.eval_report_uri"
TAG_PROMOTION = "protege.promotion"
# lineage dict key -> model version tag; every key must be given (an empty string where not applicable,
# e.g. image digests of a local run).
LINEAGE_TAGS: dict[str, str] = {
    "kfp_run_id": "protege.kfp_run_id",
    "pipeline_version": "protege.pipeline_version",
    "git_commit": "protege.git_commit",
    "image_digests": "protege.image_digests",
    "base_model": "protege.base_model",
    "dataset_digests": "protege.dataset_digests",
    "expert_model": "protege.expert_model",
    "reward_config_hash": "protege.reward_config_hash",
    "eval_set_digest": TAG_EVAL_SET,
}
# MLflow's answers when a registered model or an alias does not exist yet.
_MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


class RegisterError(ValueError):
    """Bad input to register; the message names the missing or bad item."""


@dataclass(frozen=True)
class Decision:
    """Whether the new version becomes `champion`, and why (the reason is recorded either way)."""

    promote: bool
    reason: str


def decide(
    pass_at_1: float,
    floor: float | None,
    champion_pass_at_1: float | None,
    same_eval_set: bool,
    require_not_below_champion: bool,
    baseline: tuple[str, float | None] | None = None,
) -> Decision:
    """The champion gate (pure). A run that resolved nothing (Pass@1 0: the mean of per-task resolved
    shares is 0 only when no attempt resolved) is never promoted. `floor` is the configured baseline
    (`register.pass_at_1_floor`); None means the baseline is the current champion's Pass@1.
    `champion_pass_at_1` is None when there is no champion yet; the champion is compared against only
    when it was evaluated on the same eval set (`same_eval_set`), and then whenever `floor` is None or
    `require_not_below_champion`. `baseline` (`register.beat_baseline`): (name, its latest Pass@1 on the
    same eval set, None when never measured there); the version must exceed it."""
    if pass_at_1 <= 0:
        return Decision(
            False, "Pass@1 0.0000 resolves no eval instance: a run that resolves nothing is never champion"
        )
    if floor is not None and pass_at_1 < floor:
        return Decision(False, f"Pass@1 {pass_at_1:.4f} is below the floor {floor:.4f}")
    if baseline is not None:
        name, score = baseline
        if score is None:
            return Decision(False, f"baseline '{name}' was never measured on this eval set: nothing to beat")
        if pass_at_1 <= score:
            return Decision(False, f"Pass@1 {pass_at_1:.4f} does not beat baseline '{name}' ({score:.4f})")
    cleared = f"clears the floor {floor:.4f}" if floor is not None else "resolves at least one instance"
    if baseline is not None:
        cleared += f" and beats baseline '{baseline[0]}' ({baseline[1]:.4f})"
    if champion_pass_at_1 is None:
        return Decision(True, f"no champion yet; Pass@1 {pass_at_1:.4f} {cleared}")
    if not same_eval_set:
        return Decision(True, f"champion was evaluated on another eval set; Pass@1 {pass_at_1:.4f} {cleared}")
    if (floor is None or require_not_below_champion) and pass_at_1 < champion_pass_at_1:
        return Decision(False, f"Pass@1 {pass_at_1:.4f} is below the champion's {champion_pass_at_1:.4f}")
    beats = f"; beats baseline '{baseline[0]}' ({baseline[1]:.4f})" if baseline is not None else ""
    return Decision(
        True, f"Pass@1 {pass_at_1:.4f} >= champion's {champion_pass_at_1:.4f} on the same eval set{beats}"
    )


def lineage_tags(lineage: Mapping[str, Any]) -> dict[str, str]:
    """The lineage dict as version tags; structured values (digest maps) as sorted JSON."""
    missing = sorted(set(LINEAGE_TAGS) - set(lineage))
    if missing:
        raise RegisterError(f"lineage lacks {', '.join(missing)} (give '' where not applicable)")
    unknown = sorted(set(lineage) - set(LINEAGE_TAGS))
    if unknown:
        raise RegisterError(f"unknown lineage key(s) {', '.join(unknown)}; known: {', '.join(LINEAGE_TAGS)}")
    return {tag: _tag_value(lineage[key]) for key, tag in LINEAGE_TAGS.items()}


def eval_figures(eval_report: Mapping[str, Any]) -> tuple[float, str]:
    """(Pass@1, report URI) from the result of `protege.evaluate.run`."""
    try:
        pass_at_1 = float(eval_report["summary"]["pass_at_1"])
    except (KeyError, TypeError, ValueError) as err:
        raise RegisterError(f"eval report has no numeric summary.pass_at_1 ({err!r})") from err
    uri = eval_report.get("uri") or (eval_report.get("report") or {}).get("report_json")
    if not uri:
        raise RegisterError("eval report has neither `uri` nor `report.report_json`")
    return pass_at_1, str(uri)


def current_champion(tracker: Any, name: str) -> Any | None:
    """The version holding the `champion` alias, or None when the model or the alias does not exist."""
    from protege.tracking import TrackingError

    try:
        return tracker.model_version(CHAMPION, name)
    except TrackingError as err:
        if getattr(err.__cause__, "error_code", None) in _MISSING:
            return None
        raise


def baseline_pass_at_1(tracker: Any, name: str, eval_set_digest: str) -> float | None:
    """The Pass@1 of the latest finished measurement of comparison variant `name` (protege.compare's child
    runs, tagged with the variant and the eval set's digest) on this eval set; None when there is none."""
    from protege.tracking import TAG_VARIANT

    found = [
        run
        for run in tracker.runs_tagged(TAG_VARIANT, name)
        if run.data.tags.get(TAG_EVAL_SET) == eval_set_digest
        and run.info.status == "FINISHED"
        and "pass_at_1" in run.data.metrics
    ]
    latest = max(found, key=lambda run: run.info.start_time, default=None)
    return float(latest.data.metrics["pass_at_1"]) if latest is not None else None


def run(
    cfg: ProtegeConfig,
    *,
    model_uri: str,
    eval_report: Mapping[str, Any],
    lineage: Mapping[str, Any],
    tracker: Any,
) -> dict[str, Any]:
    """Register `model_uri` (s3://...) as a new version and apply the champion gate.

    `tracker` is a protege.tracking.Tracker attached to the pipeline run (start_pipeline). Returns
    {"name", "version", "model_id", "promoted", "reason", "pass_at_1", "champion_version", "mlflow_run_id"}.
    """
    pass_at_1, report_uri = eval_figures(eval_report)
    tags = lineage_tags(lineage)
    name = cfg.tracking.registered_model
    champion = current_champion(tracker, name)
    champion_score = (
        float(champion.tags[TAG_PASS_AT_1]) if champion and TAG_PASS_AT_1 in champion.tags else None
    )
    same_set = champion is not None and champion.tags.get(TAG_EVAL_SET) == tags[TAG_EVAL_SET]
    wanted = cfg.register.beat_baseline
    baseline = (wanted, baseline_pass_at_1(tracker, wanted, tags[TAG_EVAL_SET])) if wanted else None
    decision = decide(
        pass_at_1,
        cfg.register.pass_at_1_floor,
        champion_score,
        same_set,
        cfg.register.require_not_below_champion,
        baseline,
    )
    verdict = f"{'promoted' if decision.promote else 'refused'}: {decision.reason}"
    tags |= {TAG_PASS_AT_1: repr(pass_at_1), TAG_EVAL_REPORT: report_uri, TAG_PROMOTION: verdict}
    with tracker.phase(PHASE, tags={TAG_PROMOTION: verdict}) as phase:
        tracker.log_metrics(phase.run_id, {"pass_at_1": pass_at_1, "promoted": float(decision.promote)})
        model_id = final_model_id(tracker, phase.run_id, name, model_uri, tags)
        version = tracker.register(model_id, name, tags=tags, aliases=[CHAMPION] if decision.promote else [])
    return {
        "name": name,
        "version": int(version.version),
        "model_id": model_id,
        "promoted": decision.promote,
        "reason": decision.reason,
        "pass_at_1": pass_at_1,
        "champion_version": int(champion.version) if champion else None,
        "mlflow_run_id": phase.run_id,
    }


def final_model_id(tracker: Any, run_id: str, name: str, model_uri: str, tags: Mapping[str, str]) -> str:
    """The LoggedModel to register: the one the training phase logged for `model_uri` (rl2's final model
    in the pipeline, so the version's source is that model itself), or, for a model no run of this
    experiment logged (registered from outside the pipeline), a new one made by the register run."""
    tracker.flush()  # a checkpoint model buffered while the server was down must exist before the search
    found = tracker.find_checkpoint(model_uri)
    if found is not None:
        return str(found.model_id)
    return str(tracker.log_checkpoint(run_id, name, model_uri, tags=dict(tags), wait=True))


def _tag_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------------
# Lineage: the chain from a registered model version back to its inputs (`protege lineage`)
# --------------------------------------------------------------------------------------------------

_REF = re.compile(r"^(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))?$")


class LineageError(ValueError):
    """A model reference that cannot be parsed; the message names it."""


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """`name@alias`, `name/3` or `name` (= `name@champion`) -> (name, alias, version)."""
    match = _REF.match(ref)
    if not match:
        raise LineageError(f"model reference '{ref}': expected NAME, NAME@ALIAS or NAME/VERSION")
    version = match["version"]
    if version is None and match["alias"] is None:
        return match["name"], CHAMPION, None
    return match["name"], match["alias"], int(version) if version else None


def chain(tracker: Any, ref: str) -> list[str]:
    """The lineage of the referenced version as printable lines (indentation shows the chain)."""
    from protege.tracking import TAG_MODEL_ID, TAG_PIPELINE_RUN

    name, alias, number = parse_ref(ref)
    if alias:
        version = tracker.model_version(alias, name)
    else:
        version = tracker.model_version_number(name, number)
    aliases = ", ".join(version.aliases) or "-"
    lines = [f"model {name} v{version.version} (aliases: {aliases})"]
    lines += [f"  {key} = {value}" for key, value in sorted(version.tags.items())]
    model = tracker.logged_model(version.tags[TAG_MODEL_ID])
    lines += [
        f"checkpoint {model.name} {model.model_id}",
        f"  uri = {model.tags.get('protege.checkpoint_uri', '')}",
    ]
    pipeline_run = version.tags.get(TAG_PIPELINE_RUN, "")
    if pipeline_run:
        lines += _pipeline(tracker, pipeline_run)
    return lines


# Phase-run tags that link a phase to the models it started from (rl: start model, KL reference, parent checkpoint).
PHASE_LINK_TAGS = ("protege.start_model", "protege.reference_model", "protege.parent_checkpoint")


def _pipeline(tracker: Any, run_id: str) -> list[str]:
    parent = tracker.get_run(run_id)
    lines = [f"pipeline run {parent.info.run_name} {run_id} ({parent.info.status})"]
    lines += [
        f"  {key} = {value}"
        for key, value in sorted(parent.data.tags.items())
        if not key.startswith("mlflow.")
    ]
    for phase in tracker.nested_runs(run_id):
        lines.append(f"  phase {phase.info.run_name} {phase.info.run_id} ({phase.info.status})")
        lines += [f"    {key} = {phase.data.tags[key]}" for key in PHASE_LINK_TAGS if key in phase.data.tags]
        for item in phase.inputs.dataset_inputs:
            context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), "")
            data = item.dataset
            lines.append(f"    dataset {data.name} [{context}] digest={data.digest} source={data.source}")
        for model in tracker.logged_models(phase.info.run_id):
            lines.append(
                f"    checkpoint {model.name} {model.model_id} uri={model.tags.get('protege.checkpoint_uri', '')}"
            )
    return lines
