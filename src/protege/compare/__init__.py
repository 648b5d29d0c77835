"""`protege compare` (issue 19): variants of the acting agent on one task set, in one table.

    protege compare --profile local --variants variants.yaml [--exclusions excluded.yaml] [--out DIR]

Each variant (protege.compare.spec) is a config of the same eval phase (protege.evaluate): the same
tasks, limits and grading, only its overrides and model differ. A variant is run into `<out>/<name>/`
(resuming what is there, as eval does) or gathered from an existing eval results directory. The table
(protege.compare.table) is written as compare.json/.md/.html with plots, and logged to MLflow as one
comparison run whose children are the variants, each tagged with its name and the task set's digest (the
register gate looks a named baseline up by those tags: `register.beat_baseline`).

Simplified: variants run one after the other (each eval uses `eval.workers` in parallel); pairing is by
instance on the instances both variants were graded on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.compare.spec import Spec, SpecError, Variant, load_exclusions
from protege.compare.table import Prices, build_table, write_report
from protege.config import ProtegeConfig
from protege.trajectory import Trajectory

Progress = Callable[[str], None]
ConfigFor = Callable[[list[str]], ProtegeConfig]
"""Variant overrides -> the variant's config (the comparison's profile, file and overrides, then these)."""


class CompareError(ValueError):
    """A comparison cannot be made as asked; the message names the variant, file or instance."""


def variant_dir(out_dir: Path, variant: Variant) -> Path:
    return Path(variant.results) if variant.results else out_dir / variant.name


def run_variant(cfg: ProtegeConfig, variant: Variant, out: Path, store: Any, progress: Progress) -> None:
    """One variant through the eval phase into `out` (the phase resumes what is there)."""
    from protege import evaluate
    from protege.evaluate.serving import served_policy

    progress(f"compare: variant {variant.name}: eval of {variant.model} into {out}")
    if cfg.agent.policy.backend == "transformers":
        with served_policy(cfg, variant.model, store, out) as served:
            policy_for = evaluate.policy_source(evaluate.eval_config(served, variant.model), None, store)
            evaluate.run(served, variant.model, out, policy_for=policy_for, progress=progress)
    else:
        evaluate.run(cfg, variant.model, out, script=variant.script, progress=progress)


def variant_configs(spec: Spec, config_for: ConfigFor) -> dict[str, ProtegeConfig]:
    """Every variant's config, checked before anything runs (a bad override or a missing results
    directory is named at once, not after the variants before it ran)."""
    from protege.config import ConfigError

    configs = {}
    for variant in spec.variants:
        if variant.results:
            if not Path(variant.results).is_dir():
                raise CompareError(
                    f"variant {variant.name}: results directory {variant.results} does not exist"
                )
            continue
        try:
            configs[variant.name] = config_for(variant.overrides)
        except ConfigError as err:
            raise CompareError(f"variant {variant.name}: {err}".replace("\n", "; ")) from None
    return configs


def variant_episodes(variant: Variant, out: Path) -> list[Trajectory]:
    from protege.evaluate.report import ReportError, load_results

    try:
        episodes = load_results(out).episodes
    except (ReportError, OSError) as err:
        raise CompareError(f"variant {variant.name}: {out}: {err}") from None
    if not episodes:
        raise CompareError(f"variant {variant.name}: {out} holds no graded episode")
    return episodes


def run(
    spec: Spec,
    config_for: ConfigFor,
    out_dir: str | Path,
    *,
    exclusions: str = "",
    tracker: Any = None,
    store: Any = None,
    run_name: str = "",
    progress: Progress = print,
) -> dict[str, Any]:
    """Run or gather every variant, write the table under `out_dir`, log the comparison run.

    Returns {"report" (compare.json's content), "paths", "mlflow_run_id", "uri" (the uploaded table, with
    a `store`)}."""
    from protege.evaluate import EvalError, InfraFailure
    from protege.tasksets import select_tasks, task_set_digest

    out_dir = Path(out_dir)
    base = config_for([])
    tasks = select_tasks(
        base.tasks, store=store
    ).eval  # the eval phase's own split (a bad set is named there)
    exclusions = exclusions or base.compare.exclusions
    excluded = load_exclusions(exclusions, {t.instance_id for t in tasks}) if exclusions else {}
    configs = variant_configs(spec, config_for)
    episodes: dict[str, list[Trajectory]] = {}
    for variant in spec.variants:
        out = variant_dir(out_dir, variant)
        if not variant.results:
            try:
                run_variant(configs[variant.name], variant, out, store, progress)
            except (EvalError, InfraFailure) as err:
                raise CompareError(f"variant {variant.name}: {err}") from None
        episodes[variant.name] = variant_episodes(variant, out)
    prices = Prices(base.expert.prices, base.agent.policy.prices, base.compare.price_oracle_tokens)
    args = (
        spec.reference,
        spec.expert_alone,
        base.compare,
        base.eval.confidence,
        base.rl.stage1.loop,
        prices,
    )
    tables = {"all": build_table(episodes, *args)}
    if excluded:
        tables["without_exclusions"] = build_table(episodes, *args, excluded=frozenset(excluded))
    report = {
        "task_set": {"source": base.tasks.eval, "digest": task_set_digest(tasks), "instances": len(tasks)},
        "exclusions": [{"instance_id": i, "reason": r} for i, r in sorted(excluded.items())],
        "reference": spec.reference,
        "expert_alone": spec.expert_alone,
        "confidence": base.eval.confidence,
        "bootstrap_samples": base.compare.bootstrap_samples,
        "oracle_priced": base.compare.price_oracle_tokens,
        "variants": [
            {
                "name": v.name,
                "model": v.model,
                "overrides": v.overrides,
                "results": str(variant_dir(out_dir, v)),
            }
            for v in spec.variants
        ],
        "tables": tables,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_report(report, out_dir)
    progress(f"compare: {len(spec.variants)} variant(s); table {paths['md']}")
    run_id = log_comparison(tracker, base, report, paths, out_dir, run_name) if tracker is not None else None
    uri = store.uri(f"{run_name or base.run_name}/compare") if store is not None else None
    if uri:
        store.upload_dir(out_dir, uri)
    return {
        "report": report,
        "paths": {k: str(v) for k, v in paths.items()},
        "mlflow_run_id": run_id,
        "uri": uri,
    }


def row_metrics(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """A table row's numbers as MLflow metrics (None dropped; loop rates as loop_rate_gt_<L>)."""
    flat = {f"{prefix}loop_rate_gt_{k}": v for k, v in row["loop_rates"].items()}
    flat |= {
        f"{prefix}{k}": float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return flat


def log_comparison(
    tracker: Any,
    cfg: ProtegeConfig,
    report: dict[str, Any],
    paths: dict[str, Path],
    out_dir: Path,
    run_name: str,
) -> str:
    """One top-level comparison run (the table, plots and exclusions as artifacts) with a child run per
    variant (its row as metrics, `without_exclusions.*` too; tagged with its name and the task-set digest)."""
    from protege.register import TAG_EVAL_SET
    from protege.tracking import PARENT_RUN_ENV, TAG_COMPARISON, TAG_VARIANT

    digest = report["task_set"]["digest"]
    os.environ.pop(PARENT_RUN_ENV, None)  # a comparison is a run of its own, never a pipeline's phase
    name = run_name or f"{cfg.run_name}.compare"
    parent = tracker.start_pipeline(
        name,
        cfg,
        tags={TAG_COMPARISON: digest, TAG_EVAL_SET: digest, "protege.reference": report["reference"]},
    )
    without = {row["variant"]: row for row in report["tables"].get("without_exclusions", [])}
    for variant, row in zip(report["variants"], report["tables"]["all"], strict=True):
        tags = {TAG_VARIANT: row["variant"], TAG_EVAL_SET: digest}
        params = {
            "model": variant["model"],
            "overrides": " ".join(variant["overrides"]) or "(none)",
            "results": variant["results"],
        }
        with tracker.child(row["variant"], params=params, tags=tags) as child:
            metrics = row_metrics(row)
            if row["variant"] in without:
                metrics |= row_metrics(without[row["variant"]], "without_exclusions.")
            tracker.log_metrics(child.run_id, metrics)
            report_md = Path(variant["results"]) / "report.md"
            if report_md.is_file():
                tracker.log_artifacts(child.run_id, report_md, "eval")
    for key in ("json", "md", "html"):
        tracker.log_artifacts(parent, paths[key], "comparison")
    tracker.log_artifacts(parent, out_dir / "plots", "comparison/plots")
    tracker.end_pipeline("FINISHED")
    return parent


__all__ = ["CompareError", "Spec", "SpecError", "Variant", "run"]
