"""Launching a training phase on several GPUs (torchrun, one node); sft on several nodes (a Kubeflow TrainJob).

One node: a phase (`protege.sft.run`, `protege.rl.run`) calls `launch` with its own entry point when more
than one GPU is visible and the process is not already a rank of a distributed run; this module knows no
phase. The parent resolves the base model once (so N ranks do not download
it N times), writes the config and arguments to `<out>/launch.json`, runs

    python -m torch.distributed.run --standalone --nproc_per_node=<torch.cuda.device_count()> \
        -m protege.launch <out>/launch.json

and returns the result rank 0 wrote to `<out>/result.json`. Each rank calls `protege.sft.run`, which
sees `LOCAL_RANK` and trains; only rank 0 tracks (re-attached to the parent's MLflow pipeline run via
PROTEGE_PARENT_RUN_ID) and uploads. Phase rl launches the same way (entry `protege.rl:run_launched`):
the parent plans the stage once (downloads included) and every rank trains that plan.

Several nodes: `trainjob_manifest` builds a `TrainJob` (trainer.kubeflow.org/v1alpha1) whose trainer runs
`torchrun -m protege.cli sft --profile P --dataset URI ...` on `sft.num_nodes` nodes; the runtime
(`sft.trainjob_runtime`, e.g. the stock `torch-distributed` ClusterTrainingRuntime) injects the PET_*
rendezvous variables that torchrun reads. The store's credentials come from the Secret the pipeline's steps
read (`pipeline.s3_secret`, manifests/base/secrets.yaml), and the image is the pipeline's trainer image
unless `sft.trainjob_image` names another. It cannot run here; tests check the manifest.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig

LAUNCH_FILE = "launch.json"
RESULT_FILE = "result.json"
TRAINJOB_API = "trainer.kubeflow.org/v1alpha1"
# Keys of the S3 Secret (`pipeline.s3_secret`) -> the env vars the store reads; the pipeline's steps map it
# the same way (protege.pipeline.placement.SECRET_ENV).
S3_SECRET_KEYS = {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY"}


class LaunchError(RuntimeError):
    """A distributed launch failed; the message names the command and where its logs are."""


def is_distributed() -> bool:
    """Whether this process is a rank started by torchrun/accelerate/a TrainJob."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_world_main() -> bool:
    """Rank 0 of a distributed run, or a lone process."""
    return int(os.environ.get("RANK", "0")) == 0


def visible_gpus(cfg: ProtegeConfig) -> int:
    """GPUs this run may use: `torch.cuda.device_count()`, or 0 on `device: cpu`."""
    import torch

    return torch.cuda.device_count() if cfg.device != "cpu" and torch.cuda.is_available() else 0


def should_relaunch(cfg: ProtegeConfig, gpus: int | None = None) -> bool:
    """More than one GPU and not yet distributed: re-exec under torchrun."""
    return (visible_gpus(cfg) if gpus is None else gpus) > 1 and not is_distributed()


def torchrun_command(nproc: int, launch_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "protege.launch",
        str(launch_file),
    ]


def _child_env(cfg: ProtegeConfig, tracker: Any) -> dict[str, str]:
    # Secrets never go into launch.json (it holds the masked config); the ranks read them from env.
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": cfg.store.access_key.get_secret_value(),
        "AWS_SECRET_ACCESS_KEY": cfg.store.secret_key.get_secret_value(),
    }
    if tracker is not None:
        tracker.ensure_pipeline(cfg.run_name, cfg)
        env.update(tracker.parent_env())
    return env


def write_launch_file(
    cfg: ProtegeConfig, phase_args: dict[str, Any], out_dir: Path, track: bool, upload: bool
) -> Path:
    """`<out>/launch.json`: the config (secrets dropped), the output dir and the phase's arguments."""
    config = cfg.model_dump(mode="json")
    for secret in ("access_key", "secret_key"):
        config["store"].pop(secret)
    path = out_dir / LAUNCH_FILE
    args = {"config": config, "out_dir": str(out_dir), "track": track, "upload": upload, **phase_args}
    path.write_text(json.dumps(args, indent=2))
    return path


def launch(
    cfg: ProtegeConfig,
    entry: str,
    phase_args: dict[str, Any],
    out_dir: Path,
    tracker: Any = None,
    store: Any = None,
    nproc: int | None = None,
    runner: Callable[..., Any] = subprocess.run,
) -> dict[str, Any]:
    """Run the phase's `entry` (`module:function`) under torchrun with `nproc` ranks (default: every visible
    GPU of this node), each rank given `phase_args` through the launch file; returns rank 0's result."""
    launch_file = write_launch_file(
        cfg, {"entry": entry, **phase_args}, out_dir, tracker is not None, store is not None
    )
    (out_dir / RESULT_FILE).unlink(missing_ok=True)
    command = torchrun_command(nproc or visible_gpus(cfg), launch_file)
    completed = runner(command, env=_child_env(cfg, tracker), check=False)
    if completed.returncode != 0 or not (out_dir / RESULT_FILE).is_file():
        raise LaunchError(f"`{' '.join(command)}` exited with {completed.returncode}; see its output above")
    return json.loads((out_dir / RESULT_FILE).read_text())


def _open(cfg: ProtegeConfig, launch: dict[str, Any]) -> tuple[Any, Any]:
    store = tracker = None
    if launch["upload"]:
        from protege.store import S3ArtifactStore

        store = S3ArtifactStore.from_config(cfg.store)
    if launch["track"] and is_world_main():
        from protege.tracking import Tracker

        tracker = Tracker(cfg.tracking)
        tracker.start_pipeline(cfg.run_name)  # re-attaches to PROTEGE_PARENT_RUN_ID
    return tracker, store


def main(argv: list[str] | None = None) -> int:
    """One rank: `python -m protege.launch <out>/launch.json` (started by torchrun). The launch file names the
    phase's entry point (`module:function`, called with (cfg, launch, out_dir, tracker, store)); this module
    knows no phase."""
    launch = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    cfg = ProtegeConfig.model_validate(launch["config"])
    out_dir = Path(launch["out_dir"])
    tracker, store = _open(cfg, launch)
    module, _, function = launch["entry"].partition(":")
    result = getattr(importlib.import_module(module), function)(cfg, launch, out_dir, tracker, store)
    if is_world_main():
        (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
    return 0


# --------------------------------------------------------------------------------------------------
# Multi-node: a Kubeflow Trainer TrainJob
# --------------------------------------------------------------------------------------------------


def _k8s_name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63] or "protege"


def trainjob_manifest(cfg: ProtegeConfig, dataset: str, profile: str, overrides: list[str]) -> dict[str, Any]:
    """A TrainJob running phase sft on `sft.num_nodes` × `sft.gpus_per_node` GPUs (as a YAML-ready dict)."""
    s = cfg.sft
    command = ["torchrun", "-m", "protege.cli", "sft", "--profile", profile, "--dataset", dataset, *overrides]
    secret_env = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": cfg.pipeline.s3_secret, "key": key}}}
        for key, env in S3_SECRET_KEYS.items()
    ]
    plain_env = {
        "PROTEGE_S3_ENDPOINT": cfg.store.endpoint,
        "MLFLOW_TRACKING_URI": cfg.tracking.uri,
        "HF_HUB_OFFLINE": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    return {
        "apiVersion": TRAINJOB_API,
        "kind": "TrainJob",
        "metadata": {
            "name": _k8s_name(f"{cfg.run_name}-sft"),
            "namespace": s.trainjob_namespace,
            "labels": {"protege.ai/phase": "sft", "protege.ai/run": _k8s_name(cfg.run_name)},
        },
        "spec": {
            "runtimeRef": {
                "name": s.trainjob_runtime,
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
            },
            "trainer": {
                "image": s.trainjob_image or cfg.pipeline.trainer_image,
                "command": command,
                "numNodes": s.num_nodes,
                "numProcPerNode": s.gpus_per_node,
                "resourcesPerNode": {
                    "limits": {"nvidia.com/gpu": s.gpus_per_node},
                    "requests": {"nvidia.com/gpu": s.gpus_per_node},
                },
                "env": [{"name": k, "value": v} for k, v in plain_env.items()] + secret_env,
            },
        },
    }


if __name__ == "__main__":
    sys.exit(main())
