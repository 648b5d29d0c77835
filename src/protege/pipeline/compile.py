"""`protege compile | submit | schedule`: the Kubeflow pipeline from the command line.

- `protege compile [--check]` writes `pipelines/protege_pipeline.yaml` (committed); with `--check` it
  writes nothing and exits 1 when the committed YAML differs from a fresh compile (CI's staleness gate).
- `protege submit --host URL [params]` starts one run; `protege schedule --cron EXPR --host URL [params]`
  creates a KFP recurring run (scheduled retraining). Both go through `kfp.Client` and compile afresh,
  so what runs is what this checkout says.

The pipeline lives in `pipelines/` and its components in `components/` at the repository root (they are
not part of the installed package), so these commands need a source checkout.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
PIPELINE_SOURCE = ROOT / "pipelines" / "protege_pipeline.py"
PIPELINE_YAML = ROOT / "pipelines" / "protege_pipeline.yaml"
KFP_CRON_FIELDS = 6  # KFP's cron has a leading seconds field
UNIX_CRON_FIELDS = 5
DEFAULT_COMMENT = re.compile(r"^(?P<head>#\s+\w+: \w+ )\[Default: (?P<value>[\[{].*)\]$")

ClientFactory = Callable[[str | None], Any]


class KFPError(ValueError):
    """Bad input to compile/submit/schedule; the message names it."""


def load_pipeline(name: str = "protege_pipeline") -> Any:
    """A pipeline of pipelines/protege_pipeline.py of this checkout: `protege_pipeline` (clusters, with
    its exit handler) or `local_pipeline` (kfp.local)."""
    if not PIPELINE_SOURCE.is_file():
        raise KFPError(f"{PIPELINE_SOURCE}: not found (compile/submit/schedule need a source checkout)")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # `components` and `pipelines` are top-level directories
    import importlib

    return getattr(importlib.import_module("pipelines.protege_pipeline"), name)


def _sorted_repr(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_sorted_repr(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_sorted_repr(v) for v in value) + "]"
    return repr(value)


def _stable_defaults(line: str) -> str:
    # KFP's header comment prints dict defaults in protobuf map order, which varies between processes.
    match = DEFAULT_COMMENT.match(line)
    if not match:
        return line
    return f"{match['head']}[Default: {_sorted_repr(ast.literal_eval(match['value']))}]"


def compile_pipeline(path: Path, images_tag: str | None = None) -> Path:
    """Compile the pipeline to `path`; the output depends only on the sources (no timestamps, sorted keys).

    `images_tag` (e.g. the git SHA `make images` tagged with) replaces the release tag of the agent and
    trainer images: both names come from protege.image_refs, the one place `make images` reads too.
    """
    from kfp import compiler

    from protege.image_refs import IMAGE_NAMES, image_ref

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load_pipeline(), str(path))
    text = "\n".join(_stable_defaults(line) for line in path.read_text().split("\n"))
    if images_tag:
        for kind in IMAGE_NAMES:
            text = text.replace(f"image: {image_ref(kind)}\n", f"image: {image_ref(kind, images_tag)}\n")
    path.write_text(text)
    return path


def is_stale(committed: Path = PIPELINE_YAML) -> bool:
    """True when `committed` is missing or differs from a fresh compile."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_pipeline(Path(tmp) / committed.name).read_text()
    return not committed.is_file() or committed.read_text() != fresh


def kfp_cron(expr: str) -> str:
    """A 5-field Unix cron gets KFP's leading seconds field ('0 3 * * *' -> '0 0 3 * * *')."""
    fields = expr.split()
    if len(fields) == UNIX_CRON_FIELDS:
        return " ".join(["0", *fields])
    if len(fields) == KFP_CRON_FIELDS:
        return " ".join(fields)
    raise KFPError(f"--cron '{expr}': expected 5 (Unix) or 6 (KFP, with seconds) fields, got {len(fields)}")


def _json_arg(flag: str, text: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise KFPError(f"{flag}: not JSON: {err}") from None
    if not isinstance(value, kind):
        raise KFPError(f"{flag}: expected a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def pipeline_params(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline parameters from the flags that were given (the others keep the pipeline's defaults)."""
    params: dict[str, Any] = {"profile": args.profile}
    for name in ("base_model", "train_tasks", "eval_tasks", "expert_model", "gpu_type", "gpu_count"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.override:
        params["overrides"] = json.dumps(args.override)
    if args.gpu_node_selector is not None:
        params["gpu_node_selector"] = _json_arg("--gpu-node-selector", args.gpu_node_selector, dict)
    if args.gpu_tolerations is not None:
        params["gpu_tolerations"] = _json_arg("--gpu-tolerations", args.gpu_tolerations, list)
    return params


def make_client(host: str | None) -> Any:
    import kfp

    return kfp.Client(host=host)


def submit(args: argparse.Namespace, client_factory: ClientFactory = make_client) -> Any:
    """Compile afresh and start one run in `args.experiment`; returns the client's run result."""
    params = pipeline_params(args)
    client = client_factory(args.host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / PIPELINE_YAML.name)
        return client.create_run_from_pipeline_package(
            str(package),
            arguments=params,
            run_name=args.run_name,
            experiment_name=args.experiment,
            namespace=args.namespace,
            service_account=args.service_account,
        )


def schedule(args: argparse.Namespace, client_factory: ClientFactory = make_client) -> Any:
    """Compile afresh and create a recurring run on `args.cron` in `args.experiment`."""
    from protege.config import PipelineConfig

    cron = kfp_cron(args.cron)
    params = pipeline_params(args)
    client = client_factory(args.host)
    experiment = client.create_experiment(name=args.experiment, namespace=args.namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / PIPELINE_YAML.name)
        return client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=args.name,
            cron_expression=cron,
            params=params,
            pipeline_package_path=str(package),
            no_catchup=True,
            max_concurrency=PipelineConfig().schedule_max_concurrency,
            service_account=args.service_account,
        )
