"""The demo task sources: one `demo/tasks/<name>/` directory per task, read and validated.

`task.yaml` holds the instance id, split, tests and the commit history; `issue.md` is the problem
statement; `gold.patch` and `test.patch` are unified diffs against base_commit. The repository files
at base_commit live in `demo/repos/<name>/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEMO_DIR = Path(__file__).resolve().parent
REPOS_DIR = DEMO_DIR / "repos"
TASKS_DIR = DEMO_DIR / "tasks"
JSONL_PATH = DEMO_DIR / "tasks.jsonl"
DEMO_OWNER = "protege-demo"
SPLITS = ("train", "eval", "deps")
"""`deps` holds the tasks whose tests need packages from the index (their own environment); `all` is
train + eval, which need nothing but protege's own environment."""


def packaged_name(name: str) -> str:
    """The package path of committed file `name`: a leading '.' of any part becomes 'dot-'.

    Packaging globs skip hidden files, so `.gitignore` would silently go missing from a wheel.
    """
    return "/".join("dot-" + part[1:] if part.startswith(".") else part for part in name.split("/"))


class DemoCommit(BaseModel):
    """One commit of a demo repository's history."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    message: str = Field(min_length=1)
    """Commit message."""
    date: str = Field(min_length=1)
    """Author and committer date, ISO 8601 with a UTC offset (fixed so SHAs are reproducible)."""
    files: list[str] = Field(min_length=1)
    """Paths (relative to the repository) this commit adds, in their base_commit content."""

    @field_validator("date")
    @classmethod
    def _has_offset(cls, value: str) -> str:
        # Without an explicit offset git would use the machine's time zone and the SHA would vary.
        if not (value.endswith("Z") or (len(value) > 6 and value[-6] in "+-")):
            raise ValueError(f"needs an explicit UTC offset (e.g. +00:00), got {value!r}")
        return value


class DemoTaskSpec(BaseModel):
    """A demo task as written in its `task.yaml`, plus where its files are."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Directory name under `demo/tasks/` and `demo/repos/`."""
    instance_id: str = Field(min_length=1)
    """SWE-bench instance id, `protege-demo__<name>-<n>`."""
    repo: str = Field(min_length=1)
    """`protege-demo/<name>`."""
    split: Literal["train", "eval", "deps"]
    """Which side of the demo set the task is on (`deps`: a set of its own, see SPLITS)."""
    bug_kind: str = Field(min_length=1)
    """What kind of bug it is (documentation; not exported to the JSONL)."""
    version: str = Field(min_length=1)
    """SWE-bench environment version."""
    created_at: str = Field(min_length=1)
    """Creation time of the (fictional) fix PR."""
    commits: list[DemoCommit] = Field(min_length=2)
    """History of the repository; the last commit is base_commit."""
    FAIL_TO_PASS: list[str] = Field(min_length=1, max_length=3)
    """Tests the gold patch makes pass, as pytest node ids."""
    PASS_TO_PASS: list[str] = Field(min_length=3)
    """Tests that pass before and after the fix, as pytest node ids."""
    environment: dict[str, Any] | None = None
    """The repository's built-in environment spec (protege.environments); None = protege's own."""

    @property
    def task_dir(self) -> Path:
        return TASKS_DIR / self.name

    @property
    def task_yaml(self) -> Path:
        return self.task_dir / "task.yaml"

    @property
    def files_dir(self) -> Path:
        return REPOS_DIR / self.name

    def source_file(self, name: str) -> Path:
        """Where the package stores committed file `name` (see `packaged_name`)."""
        return self.files_dir / packaged_name(name)

    @property
    def repo_dirname(self) -> str:
        return self.repo.replace("/", "__")

    @property
    def problem_statement(self) -> str:
        return (self.task_dir / "issue.md").read_text(encoding="utf-8")

    @property
    def gold_patch(self) -> str:
        return (self.task_dir / "gold.patch").read_text(encoding="utf-8")

    @property
    def test_patch(self) -> str:
        return (self.task_dir / "test.patch").read_text(encoding="utf-8")

    def committed_files(self) -> list[str]:
        """Every file of the repository at base_commit, in commit order."""
        return [name for commit in self.commits for name in commit.files]


def _load_spec(task_dir: Path) -> DemoTaskSpec:
    path = task_dir / "task.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = DemoTaskSpec.model_validate({"name": task_dir.name, **data})
    except (OSError, yaml.YAMLError, TypeError) as err:
        raise ValueError(f"{path}: unreadable ({err})") from err
    except ValidationError as err:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{path}: {fields}") from None
    if spec.repo != f"{DEMO_OWNER}/{task_dir.name}":
        raise ValueError(f"{path}: repo must be {DEMO_OWNER}/{task_dir.name}, got {spec.repo!r}")
    files = spec.committed_files()
    if len(files) != len(set(files)):
        raise ValueError(f"{path}: a file is listed in more than one commit")
    for name in ("issue.md", "gold.patch", "test.patch"):
        if not (task_dir / name).is_file():
            raise ValueError(f"{task_dir}: missing {name}")
    return spec


def load_specs() -> list[DemoTaskSpec]:
    """Every demo task, ordered by directory name."""
    return [_load_spec(d) for d in sorted(TASKS_DIR.iterdir()) if (d / "task.yaml").is_file()]
