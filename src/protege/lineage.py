"""`protege lineage MODEL[@alias|/version]`: the chain from a registered model version back to its inputs.

Reads only MLflow (through protege.tracking): the version's lineage tags (KFP run, pipeline version, git
commit, images, base model, expert, reward config, eval set and report, promotion verdict), the checkpoint
LoggedModel it was registered from, the pipeline run that produced it and each phase's nested run with its
dataset inputs (task sets, trajectories, datasets, with digests) and its checkpoints (s3:// URIs).
A bare MODEL means its `champion`.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from protege.register import CHAMPION

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
        version = tracker._call(
            f"model '{name}' v{number}", lambda: tracker.client.get_model_version(name, number)
        )
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


def _lineage_cli(args: argparse.Namespace) -> int:
    from protege.cli import CLIError, load_cfg
    from protege.tracking import Tracker, TrackingError

    try:
        for line in chain(Tracker(load_cfg(args).tracking), args.model):
            print(line)
    except (LineageError, TrackingError) as err:
        raise CLIError(str(err)) from err
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege lineage MODEL[@alias|/version]`."""
    from protege.cli import _profile_args

    parser = sub.add_parser(
        "lineage", help="print a registered model version's chain back to runs, data and KFP run"
    )
    parser.add_argument("model", help="NAME@ALIAS, NAME/VERSION or NAME (= NAME@champion)")
    _profile_args(parser)
    parser.set_defaults(func=_lineage_cli)
