"""The pipeline's optional baselines branch (issue 19): what its KFP steps do, as plain Python.

After training, with the pipeline parameter `compare_baselines` on, each name in the `baselines`
parameter is a standard variant (protege.compare.spec.standard_variants: `base`, `sft`, `sft+rl1`,
`full-no-ask`, `expert-alone`, `full-forced-k5`, ...) measured by its own parallel `baseline` task on the
eval split (`baseline_step`), with the models this run trained. The `compare` task (`compare_step`) then
gathers this run's eval results (the row `full`, the reference), the current champion's (row `champion`,
when it was evaluated on the same eval set) and every baseline's into one comparison run: a scheduled
retraining reports its deltas against the champion and the baselines, and `register.beat_baseline` can
require beating one of them (the gate reads the measurement the comparison logged).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protege.compare import ConfigFor, Variant, run, run_variant
from protege.compare.spec import Spec, SpecError, standard_variants
from protege.compare.table import REPORT_MD

BASELINES_PREFIX = "baselines"
REFERENCE = "full"
CHAMPION_ROW = "champion"


def baseline_step(config_for: ConfigFor, variant: str, models: dict[str, str], store: Any) -> str:
    """Run the standard variant `variant` (with this run's `models`: base, sft, rl1, rl2) into the step's
    work dir and upload it; returns the results URI (the last path part is the variant's name)."""
    cfg = config_for([])
    known = {v.name: v for v in standard_variants(cfg, {k: v for k, v in models.items() if v})}
    if variant not in known:
        raise SpecError(f"baselines: unknown variant {variant!r} (standard set: {', '.join(known)})")
    chosen = known[variant]
    out = Path(cfg.services.data_dir) / "runs" / cfg.run_name / BASELINES_PREFIX / variant
    run_variant(config_for(chosen.overrides), chosen, out, store, print)
    uri = store.uri(f"{cfg.run_name}/{BASELINES_PREFIX}/{variant}")
    store.upload_dir(out, uri)
    return uri


def champion_results(tracker: Any, cfg: Any, eval_set_digest: str) -> str:
    """The eval results URI of the current champion when it was evaluated on this eval set, else ''."""
    from protege.register import TAG_EVAL_REPORT, TAG_EVAL_SET, current_champion

    champion = current_champion(tracker, cfg.tracking.registered_model)
    if champion is None or champion.tags.get(TAG_EVAL_SET) != eval_set_digest:
        return ""
    return str(champion.tags.get(TAG_EVAL_REPORT, ""))


def compare_step(
    config_for: ConfigFor, model_results_uri: str, baseline_uris: Sequence[str], store: Any, tracker: Any
) -> str:
    """One comparison of this run's model (reference), the champion and the baselines; returns the URI
    of the uploaded table (compare.md under the comparison's results)."""
    from protege import evaluate
    from protege.tasksets import task_set_digest

    cfg = config_for([])
    work = Path(cfg.services.data_dir) / "runs" / cfg.run_name / "compare"
    sources = {REFERENCE: model_results_uri}
    champion = champion_results(tracker, cfg, task_set_digest(evaluate.eval_tasks(cfg, store)))
    if champion:
        sources[CHAMPION_ROW] = champion
    sources |= {uri.rstrip("/").rsplit("/", 1)[-1]: uri for uri in baseline_uris}
    variants = []
    for name, uri in sources.items():
        local = work / "gathered" / name
        store.download_dir(uri, local)
        variants.append(Variant(name, model=uri, results=str(local)))
    spec = Spec(variants, REFERENCE, cfg.compare.expert_alone)
    result = run(
        spec, config_for, work / "table", tracker=tracker, store=store, run_name=f"{cfg.run_name}.compare"
    )
    return f"{result['uri']}/{REPORT_MD}"
