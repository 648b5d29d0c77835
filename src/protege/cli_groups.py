"""Command groups defined beside their modules: each module named here exposes `add_cli(sub)`.

Keeping the list in one small file lets phases add commands without editing each other's code. Those
modules keep heavy imports (torch, trl, mlflow, kfp) inside functions so `protege --help` stays fast.
"""

from __future__ import annotations

MODULES: list[str] = [
    "protege.model",
    "protege.evaluate",
    "protege.compare.cli",
    "protege.services",
    "protege.agent.cli",
    "protege.sft",
    "protege.rl",
    "protege.synth",
    "protege.kfp_cli",
    "protege.kfp_local",
    "protege.quickstart",
    "protege.lineage",
    "protege.docker_engine",
]
