"""The train/eval split of a generated set and its manifest digests.

`split=repo` holds out whole repositories (what decontamination expects); `split=function` holds out whole
functions in every repository (train and eval then share repositories). Either way no function is on
both sides, and which side a key lands on depends only on the key and the seed.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

from protege.taskgen.core import read_rows, write_rows
from protege.tasks import TaskInstance

INSTANCES = "instances.jsonl"


def unique_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an append-only JSONL file, the last row of each instance_id winning."""
    rows: dict[str, dict[str, Any]] = {}
    for row in read_rows(path):
        rows[row["instance_id"]] = row
    return [rows[key] for key in sorted(rows)]


def _held_out(keys: list[str], fraction: float, seed: int) -> set[str]:
    ranked = sorted(keys, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
    count = round(len(ranked) * fraction)
    if fraction > 0 and len(ranked) > 1:
        count = min(max(count, 1), len(ranked) - 1)
    return set(ranked[:count])


def write_split(out: Path, split: str = "repo", eval_fraction: float = 0.25, seed: int = 0) -> dict[str, Any]:
    """train.jsonl / eval.jsonl from every instance in the output directory, no repository (split=repo)
    or function (split=function) on both sides; the manifest holds each side's digest."""
    from protege.tasksets import task_set_digest

    rows = unique_rows(out / INSTANCES)
    key_of = (
        (lambda row: row["repo"]) if split == "repo" else (lambda row: f"{row['repo']}:{row['function']}")
    )
    held = _held_out(sorted({key_of(row) for row in rows}), eval_fraction, seed)
    sides: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    for row in rows:
        side = "eval" if key_of(row) in held else "train"
        sides[side].append({**row, "split": side})
    manifest: dict[str, Any] = {"split": split, "eval_fraction": eval_fraction, "seed": seed}
    for side, side_rows in sides.items():
        path = write_rows(out / f"{side}.jsonl", side_rows)
        tasks = [TaskInstance.model_validate(row) for row in side_rows]
        manifest[side] = {
            "file": path.name,
            "instances": len(side_rows),
            "sha256": task_set_digest(tasks) if tasks else "",
            "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "repos": sorted({row["repo"] for row in side_rows}),
            "functions": len({f"{row['repo']}:{row['function']}" for row in side_rows}),
        }
    per_repo: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "eval": 0})
    for side, side_rows in sides.items():
        for row in side_rows:
            per_repo[row["repo"]][side] += 1
    manifest["per_repo"] = dict(sorted(per_repo.items()))
    return manifest
