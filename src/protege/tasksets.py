"""Loading, validating and selecting task sets.

Sources: `.jsonl` / `.json` / `.parquet` files, a `datasets.save_to_disk` directory, a swebench
task-repo directory (`tasks/<id>/task.yaml ...`), `s3://bucket/key` (a file or a prefix holding one of
the above), an HF hub id (on clusters), and `demo:train|eval|all` (the bundled demo set).

Validation reads every row and reports every bad one (its file and line or row number, its
instance_id when it has one, the field and the reason) before returning anything: a task set is
loaded whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from protege.config import TaskSetConfig
from protege.tasks import TaskInstance

# How many problems to spell out before summarising (a 500-row file with one systematic error
# should not print 500 lines).
MAX_REPORTED_ERRORS = 50


@dataclass
class RowProblem:
    """One bad row: where it is, which instance, which field, why."""

    where: str
    instance_id: str
    field: str
    reason: str

    def __str__(self) -> str:
        who = f" [{self.instance_id}]" if self.instance_id else ""
        return f"{self.where}{who}: {self.field}: {self.reason}"


class TaskSetError(ValueError):
    """A task set cannot be loaded; `problems` lists every bad row."""

    def __init__(self, source: str, problems: list[RowProblem] | None = None, message: str = ""):
        self.source = source
        self.problems = problems or []
        if len(self.problems) == 1 and not message:
            # One bad row: one line that names its file and line, instance, field and reason.
            super().__init__(str(self.problems[0]))
            return
        lines = [message or f"{source}: {len(self.problems)} invalid row(s)"]
        lines += [f"  {p}" for p in self.problems[:MAX_REPORTED_ERRORS]]
        if len(self.problems) > MAX_REPORTED_ERRORS:
            lines.append(f"  ... and {len(self.problems) - MAX_REPORTED_ERRORS} more")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# Raw rows from each source form: (location, row-or-parse-error)
# --------------------------------------------------------------------------------------------------

RawRow = tuple[str, "dict[str, Any] | str"]


def _not_text(path: Path, err: UnicodeDecodeError) -> TaskSetError:
    byte = err.object[err.start : err.start + 1].hex()
    return TaskSetError(
        str(path), message=f"{path}: not UTF-8 text (byte 0x{byte} at offset {err.start}); a binary file?"
    )


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    with path.open(encoding="utf-8") as handle:
        lines = enumerate(handle, 1)
        while True:
            try:
                number, line = next(lines, (0, ""))
            except UnicodeDecodeError as err:
                raise _not_text(path, err) from None
            if not number:
                return
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                yield where, f"not valid JSON ({err.msg} at column {err.colno})"


def _json_rows(path: Path) -> Iterator[RawRow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise _not_text(path, err) from None
    except json.JSONDecodeError as err:
        raise TaskSetError(
            str(path), message=f"{path}: not valid JSON ({err.msg} at line {err.lineno})"
        ) from None
    if isinstance(data, dict):
        data = data.get("instances", data.get("data"))
    if not isinstance(data, list):
        raise TaskSetError(str(path), message=f"{path}: expected a JSON list of instances")
    for index, row in enumerate(data):
        yield f"{path}[{index}]", row


def _table_rows(rows: Iterable[dict[str, Any]], label: str) -> Iterator[RawRow]:
    for index, row in enumerate(rows):
        yield f"{label} row {index}", dict(row)


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise TaskSetError(str(path), message=f"{path}: not a readable parquet file ({err})") from None
    yield from _table_rows(table.to_pylist(), str(path))


def _saved_dataset_rows(path: Path) -> Iterator[RawRow]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as err:
        raise TaskSetError(
            str(path), message=f"{path}: not a readable save_to_disk dataset ({err})"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        for split, part in loaded.items():
            yield from _table_rows(part, f"{path}[{split}]")
    else:
        yield from _table_rows(loaded, str(path))


def _task_repo_rows(path: Path) -> Iterator[RawRow]:
    from swebench.task.repo import load_task, task_dirs

    for task_dir in task_dirs(path):
        try:
            yield str(task_dir), load_task(task_dir)
        except (OSError, ValueError) as err:
            yield str(task_dir), f"unreadable task directory ({err})"


def _hub_rows(dataset_id: str, split: str) -> Iterator[RawRow]:
    import datasets

    try:
        loaded = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # datasets raises many types (offline, missing, auth)
        raise TaskSetError(
            dataset_id, message=f"{dataset_id}: cannot load HF dataset split '{split}': {err}"
        ) from None
    yield from _table_rows(loaded, f"{dataset_id}[{split}]")


def _local_rows(path: Path) -> Iterator[RawRow]:
    if path.is_dir():
        if (path / "tasks").is_dir():
            return _task_repo_rows(path)
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _saved_dataset_rows(path)
        raise TaskSetError(
            str(path),
            message=f"{path}: directory is neither a swebench task repo (tasks/) nor a save_to_disk dataset",
        )
    readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows}
    reader = readers.get(path.suffix)
    if reader is None:
        raise TaskSetError(
            str(path), message=f"{path}: unknown task-set format (expected {', '.join(readers)})"
        )
    return reader(path)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _problems_of(where: str, row: dict[str, Any], err: ValidationError) -> list[RowProblem]:
    instance_id = str(row.get("instance_id", "") or "")
    problems = []
    for item in err.errors():
        field_name = ".".join(str(p) for p in item["loc"]) or "(row)"
        reason = "missing required field" if item["type"] == "missing" else item["msg"]
        problems.append(RowProblem(where, instance_id, field_name, reason.removeprefix("Value error, ")))
    return problems


def validate_rows(source: str, rows: Iterable[RawRow]) -> list[TaskInstance]:
    """Every row validated; raises TaskSetError listing every bad row, else returns all instances."""
    tasks: list[TaskInstance] = []
    problems: list[RowProblem] = []
    first_seen: dict[str, str] = {}
    for where, row in rows:
        if isinstance(row, str):
            problems.append(RowProblem(where, "", "(line)", row))
            continue
        if not isinstance(row, dict):
            problems.append(RowProblem(where, "", "(row)", f"expected an object, got {type(row).__name__}"))
            continue
        try:
            task = TaskInstance.model_validate(row)
        except ValidationError as err:
            problems.extend(_problems_of(where, row, err))
            continue
        if task.instance_id in first_seen:
            reason = f"duplicate instance_id (first at {first_seen[task.instance_id]})"
            problems.append(RowProblem(where, task.instance_id, "instance_id", reason))
            continue
        first_seen[task.instance_id] = where
        tasks.append(task)
    if problems:
        raise TaskSetError(source, problems)
    if not tasks:
        raise TaskSetError(source, message=f"{source}: no task instances found")
    return tasks


def load_task_set(source: str, *, hf_split: str = "test", store: Any = None) -> list[TaskInstance]:
    """Load and validate a whole task set from any supported source (see module docstring)."""
    if source.startswith("demo:"):
        from protege.demo import demo_tasks

        split = source.removeprefix("demo:") or "all"
        if split not in ("train", "eval", "all"):
            raise TaskSetError(source, message=f"{source}: demo split must be train, eval or all")
        return demo_tasks(split)
    if source.startswith("s3://"):
        return _load_from_s3(source, hf_split=hf_split, store=store)
    path = Path(source)
    if path.exists():
        return validate_rows(source, _local_rows(path))
    if "/" in source and not source.startswith((".", "/")) and source.count("/") == 1:
        return validate_rows(source, _hub_rows(source, hf_split))
    raise TaskSetError(source, message=f"{source}: no such file or directory (and not an s3:// URI or HF id)")


def _load_from_s3(uri: str, *, hf_split: str, store: Any) -> list[TaskInstance]:
    if store is None:
        from protege.config import StoreConfig
        from protege.store import S3ArtifactStore

        store = S3ArtifactStore.from_config(StoreConfig())
    with tempfile.TemporaryDirectory(prefix="protege-taskset-") as tmp:
        local = store.fetch(uri, Path(tmp))
        return load_task_set(str(local), hf_split=hf_split)


# --------------------------------------------------------------------------------------------------
# Selection: ids, deterministic split, decontamination
# --------------------------------------------------------------------------------------------------


@dataclass
class TaskSelection:
    """Training and evaluation tasks for a run, and what was dropped and why."""

    train: list[TaskInstance]
    eval: list[TaskInstance]
    dropped: dict[str, str] = field(default_factory=dict)
    """instance_id -> reason (e.g. decontamination)."""


def _pick_ids(tasks: list[TaskInstance], ids: list[str], source: str) -> list[TaskInstance]:
    if not ids:
        return tasks
    by_id = {t.instance_id: t for t in tasks}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise TaskSetError(
            source, message=f"{source}: instance id(s) not in the task set: {', '.join(missing)}"
        )
    return [by_id[i] for i in ids]


def _split_key(instance_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{instance_id}".encode()).hexdigest()


def split_tasks(tasks: list[TaskInstance], eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split by hashed id: the same ids land on the same side on every machine."""
    ordered = sorted(tasks, key=lambda t: _split_key(t.instance_id, seed))
    n_eval = round(len(ordered) * eval_fraction)
    eval_ids = {t.instance_id for t in ordered[:n_eval]}
    return [t for t in tasks if t.instance_id not in eval_ids], [
        t for t in tasks if t.instance_id in eval_ids
    ]


def select_tasks(cfg: TaskSetConfig, *, store: Any = None) -> TaskSelection:
    """Apply the config: load, pick ids, split if train == eval, decontaminate, cap."""
    train = load_task_set(cfg.train, hf_split=cfg.hf_split, store=store)
    if cfg.eval_fraction > 0 and cfg.train == cfg.eval:
        train, evaluation = split_tasks(train, cfg.eval_fraction, cfg.split_seed)
    else:
        evaluation = load_task_set(cfg.eval, hf_split=cfg.hf_split, store=store)
    train = _pick_ids(train, cfg.train_ids, cfg.train)
    evaluation = _pick_ids(evaluation, cfg.eval_ids, cfg.eval)
    dropped: dict[str, str] = {}
    if cfg.decontaminate:
        eval_repos = {t.repo for t in evaluation}
        for task in train:
            if task.repo in eval_repos:
                dropped[task.instance_id] = f"decontamination: repo {task.repo} is in the evaluation set"
        train = [t for t in train if t.instance_id not in dropped]
    if cfg.max_train and len(train) > cfg.max_train:
        train = sorted(train, key=lambda t: _split_key(t.instance_id, cfg.split_seed))[: cfg.max_train]
    return TaskSelection(train=train, eval=evaluation, dropped=dropped)


def ensure_local_repos(
    tasks: list[TaskInstance], source: str, repos_dir: str | Path, error: type[Exception] = FileNotFoundError
) -> None:
    """The local sandbox needs each task's repository under `repos_dir`: the demo's are built on first use;
    for any other source a missing one raises `error` naming the source, the directory and the repos."""
    repos_dir = Path(repos_dir)
    missing = sorted({t.repo_dirname for t in tasks if not (repos_dir / t.repo_dirname).exists()})
    if not missing:
        return
    if not source.startswith("demo:"):
        raise error(f"{source}: repositories missing under {repos_dir}: {', '.join(missing)}")
    from protege.demo import build_demo_repos

    build_demo_repos(repos_dir)


def task_set_digest(tasks: list[TaskInstance]) -> str:
    """sha256 over the instances (order-independent): the dataset digest used in lineage."""
    rows = sorted(json.dumps(t.to_swebench(), sort_keys=True) for t in tasks)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


MLFLOW_DIGEST_CHARS = 32
"""MLflow caps a dataset digest at 36 characters; the full sha256 rides along as the input tag `sha256`."""


def log_task_set(
    tracker: Any, run_id: str, name: str, source: str, tasks: list[TaskInstance], context: str
) -> str:
    """Record a task set as a dataset input (digest: task_set_digest) of the phase run `run_id` and of the
    pipeline run `tracker` is in; returns the full digest."""
    digest = task_set_digest(tasks)
    tags = {"sha256": digest, "instances": str(len(tasks))}
    for target in dict.fromkeys([run_id, tracker.parent_run_id]):
        if target:
            tracker.log_dataset(
                target, name, source, digest=digest[:MLFLOW_DIGEST_CHARS], context=context, tags=tags
            )
    return digest


def train_tasks(cfg: Any, store: Any = None, error: type[Exception] = TaskSetError) -> list[TaskInstance]:
    """The training split of `cfg.tasks` (a ProtegeConfig); the local sandbox's repositories are built first when
    they are the demo's. `error`: the exception type the calling phase raises for bad input."""
    tasks = select_tasks(cfg.tasks, store=store).train
    if not tasks:
        raise error(f"{cfg.tasks.train}: no training tasks selected")
    if cfg.agent.sandbox.backend == "local":
        ensure_local_repos(tasks, cfg.tasks.train, cfg.tasks.repos_dir, error=error)
    return tasks
