"""Loading, validating and selecting task sets.

Sources: `.jsonl` / `.json` / `.parquet` files, a `datasets.save_to_disk` directory, a swebench
task-repo directory (`tasks/<id>/task.yaml ...`), a local copy of a hub dataset repository (`data/*.parquet`
and a README, as `git clone` of the hub gives), `s3://bucket/key` (a file or a prefix holding one of the
above), an HF hub id `owner/name[@revision][:split]` (online on clusters), and `demo:train|eval|all`.

Rows may be in any published schema (swebench 5.x, classic SWE-bench, SWE-Gym, SWE-smith): each is
normalised into TaskInstance's columns first (`protege.task_schemas`). Validation reads every row and
reports every bad one (its file and line or row number, its instance_id when it has one, the field and the
reason) before returning anything: a task set is loaded whole or not at all. `import_task_set` is the
forgiving twin behind `protege tasks import`: it writes every row that normalises and names each refused one.

A loaded set is a `TaskSet` (a list) that remembers where it came from (`TaskSetOrigin`: source, split, and
for hub datasets the commit the hub served), which the lineage records next to the rows' sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from protege.config import TaskSetConfig
from protege.task_schemas import EvalCommands, RowRefused, normalise_row
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


@dataclass(frozen=True)
class TaskSetOrigin:
    """Where a task set came from: what the lineage records beside the rows' digest."""

    source: str
    split: str = ""
    """The split read, for sources that have splits (hub datasets and their local copies)."""
    revision: str = ""
    """The commit of the dataset repository that was read (hub datasets; git copies of them)."""

    def tags(self) -> dict[str, str]:
        return {k: v for k, v in (("split", self.split), ("revision", self.revision)) if v}


class TaskSet(list[TaskInstance]):
    """The validated instances of a task set, and their origin."""

    def __init__(self, tasks: Iterable[TaskInstance] = (), origin: TaskSetOrigin | None = None):
        super().__init__(tasks)
        self.origin = origin or TaskSetOrigin("")

    def keep(self, tasks: Iterable[TaskInstance]) -> TaskSet:
        """A subset (or reordering) of this set, with the same origin."""
        return TaskSet(tasks, self.origin)


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


class _Counted(Iterator[RawRow]):
    """Rows whose number is known up front (a dataset split): what lets a long import give an ETA."""

    def __init__(self, rows: Iterator[RawRow], total: int):
        self._rows, self.total = rows, total

    def __next__(self) -> RawRow:
        return next(self._rows)


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


def hub_offline() -> bool:
    """Whether the hub may not be reached: HF_HUB_OFFLINE (the local profile's runner and `make` set it; the
    images do not, so cluster steps load hub datasets)."""
    import huggingface_hub.constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").lower()
    return bool(huggingface_hub.constants.HF_HUB_OFFLINE) or flag in ("1", "true", "yes", "on")


def parse_hub_source(source: str) -> tuple[str, str, str]:
    """`owner/name[@revision][:split]` -> (dataset id, revision, split); '' where not given."""
    rest, _, split = source.partition(":")
    dataset_id, _, revision = rest.partition("@")
    return dataset_id, revision, split


def _choose_split(names: list[str], wanted: str, label: str) -> str:
    if wanted:
        if wanted not in names:
            raise TaskSetError(label, message=f"{label}: no split '{wanted}' (it has: {', '.join(names)})")
        return wanted
    if len(names) == 1:
        return names[0]
    if "test" in names:
        return "test"
    raise TaskSetError(
        label, message=f"{label}: name a split (it has: {', '.join(names)}), e.g. {label}:{names[0]}"
    )


def _dataset_rows(path: str, revision: str, split: str, label: str) -> tuple[Iterator[RawRow], str]:
    """Rows of one split of a hub dataset or a local copy of one, and the split read."""
    import datasets

    try:
        names = datasets.get_dataset_split_names(path, revision=revision or None)
        chosen = _choose_split(list(names), split, label)
        loaded = datasets.load_dataset(path, revision=revision or None, split=chosen)
    except TaskSetError:
        raise
    except Exception as err:  # datasets raises many types (offline, missing, auth, schema)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TaskSetError(label, message=f"{label}: cannot load dataset: {reason}") from None
    return _Counted(_table_rows(loaded, f"{label}[{chosen}]"), len(loaded)), chosen


def _hub_rows(source: str, split: str) -> tuple[Iterator[RawRow], TaskSetOrigin]:
    dataset_id, revision, inline_split = parse_hub_source(source)
    if hub_offline():
        raise TaskSetError(
            source,
            message=f"{source}: cannot load a hub dataset offline (HF_HUB_OFFLINE=1, the local profile's "
            f"setting); use a local copy (a file, or the dataset repository cloned) or unset HF_HUB_OFFLINE",
        )
    from huggingface_hub import HfApi

    try:  # pin what is read: the commit the hub serves now, unless the source names one
        sha = HfApi().dataset_info(dataset_id, revision=revision or None).sha or revision
    except Exception as err:  # network, auth, missing repo or revision
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TaskSetError(source, message=f"{source}: cannot reach the hub dataset: {reason}") from None
    rows, chosen = _dataset_rows(dataset_id, sha, inline_split or split, dataset_id)
    return rows, TaskSetOrigin(f"hf://{dataset_id}", chosen, sha)


def _is_dataset_repo_copy(path: Path) -> bool:
    """A local copy of a hub dataset repository: data files `datasets.load_dataset(dir)` can read."""
    patterns = ("*.parquet", "*.jsonl", "*.json", "*.arrow")
    return any(any(path.glob(p)) or any((path / "data").glob(p)) for p in patterns)


def _git_head(path: Path) -> str:
    import subprocess

    if not (path / ".git").exists():
        return ""
    found = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() if found.returncode == 0 else ""


def _local_rows(path: Path) -> Iterator[RawRow]:
    if path.is_dir():
        if (path / "tasks").is_dir():
            return _task_repo_rows(path)
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _saved_dataset_rows(path)
        raise TaskSetError(
            str(path),
            message=f"{path}: directory is neither a swebench task repo (tasks/), a save_to_disk dataset nor a "
            "dataset repository copy (data/*.parquet)",
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


def _check_row(where: str, row: Any, env: EvalCommands | None) -> TaskInstance | list[RowProblem]:
    """One raw row as a TaskInstance (normalised from its published schema), or what is wrong with it."""
    if isinstance(row, str):
        return [RowProblem(where, "", "(line)", row)]
    if not isinstance(row, dict):
        return [RowProblem(where, "", "(row)", f"expected an object, got {type(row).__name__}")]
    instance_id = str(row.get("instance_id", "") or "")
    try:
        normal = normalise_row(row, env).row
    except RowRefused as refused:
        return [RowProblem(where, instance_id, refused.field, refused.reason)]
    try:
        return TaskInstance.model_validate(normal)
    except ValidationError as err:
        return _problems_of(where, normal, err)


def _checked_rows(
    rows: Iterable[RawRow], env: EvalCommands | None
) -> Iterator[tuple[str, TaskInstance | list[RowProblem]]]:
    """Each row checked, duplicates of an earlier instance_id refused."""
    first_seen: dict[str, str] = {}
    for where, row in rows:
        checked = _check_row(where, row, env)
        if isinstance(checked, TaskInstance):
            if checked.instance_id in first_seen:
                reason = f"duplicate instance_id (first at {first_seen[checked.instance_id]})"
                checked = [RowProblem(where, checked.instance_id, "instance_id", reason)]
            else:
                first_seen[checked.instance_id] = where
        yield where, checked


def validate_rows(
    source: str,
    rows: Iterable[RawRow],
    origin: TaskSetOrigin | None = None,
    env: EvalCommands | None = None,
    refused: list[RowProblem] | None = None,
) -> TaskSet:
    """Every row normalised and validated; raises TaskSetError listing every bad row, else returns them all.
    With a `refused` list the bad rows go there instead (what `tasks verify` reports as broken instances)."""
    tasks = TaskSet(origin=origin or TaskSetOrigin(source))
    problems: list[RowProblem] = []
    for _, checked in _checked_rows(rows, env):
        if isinstance(checked, TaskInstance):
            tasks.append(checked)
        else:
            problems.extend(checked)
    if problems and refused is not None:
        refused.extend(problems)
    elif problems:
        raise TaskSetError(source, problems)
    if not tasks and not problems:
        raise TaskSetError(source, message=f"{source}: no task instances found")
    return tasks


def _raw_rows(source: str, split: str) -> tuple[Iterator[RawRow], TaskSetOrigin]:
    """The raw rows of a local or hub source, and its origin."""
    path = Path(source)
    marked = any((path / name).exists() for name in _DIR_MARKERS)
    if path.is_dir() and not marked and _is_dataset_repo_copy(path):
        rows, chosen = _dataset_rows(str(path), "", split, source)
        return rows, TaskSetOrigin(source, chosen, _git_head(path))
    if path.exists():
        return _local_rows(path), TaskSetOrigin(source)
    dataset_id = parse_hub_source(source)[0]
    if dataset_id.count("/") == 1 and not source.startswith((".", "/")):
        return _hub_rows(source, split)
    raise TaskSetError(source, message=f"{source}: no such file or directory (and not an s3:// URI or HF id)")


_DIR_MARKERS = ("tasks", "dataset_info.json", "dataset_dict.json")
"""What makes a directory a task repo or a save_to_disk dataset rather than a copy of a hub dataset repo."""


def load_task_set(
    source: str,
    *,
    split: str = "",
    store: Any = None,
    env: EvalCommands | None = None,
    refused: list[RowProblem] | None = None,
) -> TaskSet:
    """Load and validate a whole task set from any supported source (see module docstring).

    `split` applies to hub datasets and their local copies (a `:split` in the source wins); '' reads the
    dataset's only split, else its `test` split. With a `refused` list, rows that cannot become instances
    are appended there and the others load (a source that cannot be read at all still raises).
    """
    if source.startswith("demo:"):
        from protege.demo import demo_tasks

        demo_split = source.removeprefix("demo:") or "all"
        if demo_split not in ("train", "eval", "all", "deps"):
            raise TaskSetError(source, message=f"{source}: demo split must be train, eval, all or deps")
        return TaskSet(demo_tasks(demo_split), TaskSetOrigin(source, demo_split))
    if source.startswith("s3://"):
        return _load_from_s3(source, split=split, store=store, env=env, refused=refused)
    rows, origin = _raw_rows(source, split)
    return validate_rows(source, rows, origin, env, refused)


def _default_store() -> Any:
    from protege.config import StoreConfig
    from protege.store import S3ArtifactStore

    return S3ArtifactStore.from_config(StoreConfig())


def _load_from_s3(
    uri: str, *, split: str, store: Any, env: EvalCommands | None, refused: list[RowProblem] | None
) -> TaskSet:
    store = store or _default_store()
    with tempfile.TemporaryDirectory(prefix="protege-taskset-") as tmp:
        local = store.fetch(uri, Path(tmp))
        loaded = load_task_set(str(local), split=split, env=env, refused=refused)
        return TaskSet(loaded, TaskSetOrigin(uri, loaded.origin.split, loaded.origin.revision))


# --------------------------------------------------------------------------------------------------
# Import: the forgiving load, written out in the normalised local form
# --------------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What `import_task_set` wrote and what it refused (one RowProblem per refused row)."""

    out: Path
    written: int
    refused: list[RowProblem]
    origin: TaskSetOrigin


def import_task_set(
    source: str,
    out: str | Path,
    *,
    split: str = "",
    store: Any = None,
    env: EvalCommands | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> ImportReport:
    """Every row of `source` that normalises, written to `out` as JSONL in swebench 5.x columns (FAIL_TO_PASS
    and PASS_TO_PASS as JSON strings, `eval_script` filled in): a file `load_task_set` reads as is. Refused
    rows are reported, not fatal; the file is replaced only once complete. `progress(rows read, total or
    None)` is called every PROGRESS_EVERY rows and at the end of a longer import."""
    if source.startswith("s3://"):
        store = store or _default_store()
        with tempfile.TemporaryDirectory(prefix="protege-import-") as tmp:
            local = store.fetch(source, Path(tmp))
            report = import_task_set(str(local), out, split=split, env=env, progress=progress)
        report.origin = TaskSetOrigin(source, report.origin.split, report.origin.revision)
        return report
    if source.startswith("demo:"):
        loaded = load_task_set(source)
        checked: Iterable[tuple[str, TaskInstance | list[RowProblem]]] = [(source, t) for t in loaded]
        origin, total = loaded.origin, len(loaded)
    else:
        rows, origin = _raw_rows(source, split)
        checked, total = _checked_rows(rows, env), getattr(rows, "total", None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    written, refused, read = 0, [], 0
    with partial.open("w", encoding="utf-8") as handle:
        for _, result in checked:
            read += 1
            if isinstance(result, TaskInstance):
                handle.write(json.dumps(result.to_swebench(), sort_keys=True) + "\n")
                written += 1
            else:
                refused.extend(result)
            if progress and read % PROGRESS_EVERY == 0:
                progress(read, total)
    partial.replace(out)
    if progress and read >= PROGRESS_EVERY:  # a short import needs no progress line
        progress(read, total)
    return ImportReport(out, written, refused, origin)


PROGRESS_EVERY = 1000
"""Rows between two progress reports of an import."""


# --------------------------------------------------------------------------------------------------
# Selection: ids, deterministic split, decontamination
# --------------------------------------------------------------------------------------------------


@dataclass
class TaskSelection:
    """Training and evaluation tasks for a run, and what was dropped and why."""

    train: TaskSet
    eval: TaskSet
    dropped: dict[str, str] = field(default_factory=dict)
    """instance_id -> reason (e.g. decontamination)."""


def _pick_ids(tasks: TaskSet, ids: list[str], source: str) -> TaskSet:
    if not ids:
        return tasks
    by_id = {t.instance_id: t for t in tasks}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise TaskSetError(
            source, message=f"{source}: instance id(s) not in the task set: {', '.join(missing)}"
        )
    return tasks.keep(by_id[i] for i in ids)


def _split_key(instance_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{instance_id}".encode()).hexdigest()


def split_tasks(tasks: list[TaskInstance], eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split by hashed id: the same ids land on the same side on every machine."""
    ordered = sorted(tasks, key=lambda t: _split_key(t.instance_id, seed))
    n_eval = round(len(ordered) * eval_fraction)
    eval_ids = {t.instance_id for t in ordered[:n_eval]}
    keep = tasks.keep if isinstance(tasks, TaskSet) else list
    train = keep(t for t in tasks if t.instance_id not in eval_ids)
    return train, keep(t for t in tasks if t.instance_id in eval_ids)


def split_of(cfg: TaskSetConfig, source: str) -> str:
    """The configured split of `source` when it is the profile's train or eval set (train's wins when both)."""
    if source == cfg.train:
        return cfg.train_split
    return cfg.eval_split if source == cfg.eval else ""


def select_tasks(cfg: TaskSetConfig, *, store: Any = None) -> TaskSelection:
    """Apply the config: load (each set with its own split), pick ids, split if train == eval,
    decontaminate, cap."""
    train = load_task_set(cfg.train, split=cfg.train_split, store=store)
    if cfg.eval_fraction > 0 and cfg.train == cfg.eval:
        train, evaluation = split_tasks(train, cfg.eval_fraction, cfg.split_seed)
    else:
        evaluation = load_task_set(cfg.eval, split=cfg.eval_split, store=store)
    train = _pick_ids(train, cfg.train_ids, cfg.train)
    evaluation = _pick_ids(evaluation, cfg.eval_ids, cfg.eval)
    dropped: dict[str, str] = {}
    if cfg.decontaminate:
        eval_repos = {t.repo for t in evaluation}
        for task in train:
            if task.repo in eval_repos:
                dropped[task.instance_id] = f"decontamination: repo {task.repo} is in the evaluation set"
        train = train.keep(t for t in train if t.instance_id not in dropped)
    if cfg.max_train and len(train) > cfg.max_train:
        train = train.keep(
            sorted(train, key=lambda t: _split_key(t.instance_id, cfg.split_seed))[: cfg.max_train]
        )
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


def _lineage_source(origin: TaskSetOrigin, source: str) -> str:
    if origin.source.startswith("hf://") and origin.revision:
        return f"{origin.source}@{origin.revision}" + (f":{origin.split}" if origin.split else "")
    return source


def log_task_set(
    tracker: Any, run_id: str, name: str, source: str, tasks: list[TaskInstance], context: str
) -> str:
    """Record a task set as a dataset input (digest: task_set_digest) of the phase run `run_id` and of the
    pipeline run `tracker` is in; returns the full digest."""
    digest = task_set_digest(tasks)
    tags = {"sha256": digest, "instances": str(len(tasks))}
    origin = getattr(tasks, "origin", None)
    # A hub set's split and the commit read: the rows' digest says what was read, these say where from.
    if origin is not None:
        tags.update(origin.tags())
        source = _lineage_source(origin, source)
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
