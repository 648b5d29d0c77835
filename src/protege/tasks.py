"""Task instances in the SWE-bench format, and task sets.

A `TaskInstance` carries exactly SWE-bench's columns plus the swebench 5.x spec columns (`image`,
`eval_script`, `log_parser`, `eval_type`), so `swebench.harness.test_spec.make_test_spec` and
`get_eval_report` accept `instance.to_swebench()` unchanged; and optionally an `environment` column, an
`EnvironmentSpec` (resolved and built by protege.environments).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TEST_OUTPUT_START = ">>>>> Start Test Output"
TEST_OUTPUT_END = ">>>>> End Test Output"


class EnvironmentSpec(BaseModel):
    """What a task's tests need: an interpreter, packages, and the commands that install the repository."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = ""
    """Where the spec came from (for messages; not part of the digest)."""
    python: str = ""
    """Python `major.minor` (e.g. "3.11"); empty = the interpreter protege runs on."""
    packages: list[str] = []
    """Requirement specifiers installed from the package index into the environment (pin them)."""
    pre_install: list[str] = []
    """Shell lines run in the episode's copy of the repository before `install` (no network)."""
    install: str = ""
    """Shell line run in the episode's copy after the environment is ready (no network)."""
    install_repo: bool = False
    """Install the repository in development mode (editable, no dependencies, offline) in each episode."""

    @field_validator("python")
    @classmethod
    def _major_minor(cls, value: str) -> str:
        if value and not re.fullmatch(r"\d+\.\d+", value):
            raise ValueError(f"must be a major.minor version like '3.11', got {value!r}")
        return value

    @field_validator("packages")
    @classmethod
    def _no_blank(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("an entry is blank")
        return value

    @property
    def is_host(self) -> bool:
        """True when the spec asks for nothing beyond protege's own environment (which has pytest; a spec
        that asks for anything gets a venv of its own, and must list its test runner)."""
        return not self.python and not self.packages and not self.install_repo

    def venv_packages(self) -> list[str]:
        """What the environment installs: `packages`, plus setuptools for the offline editable install (70.1 is
        the first with bdist_wheel built in; the setuptools a venv is seeded with may be older)."""
        needs_backend = self.install_repo and not any(re.match(r"setuptools\b", p) for p in self.packages)
        return [*self.packages, "setuptools>=70.1"] if needs_backend else list(self.packages)

    def env_digest(self) -> str:
        """Identity of the built environment (python + what it installs): the key of venvs and env images."""
        return spec_digest({"python": self.python, "packages": self.venv_packages()})

    def digest(self) -> str:
        """Identity of the whole spec (the install commands too): the cache key of instance images."""
        return spec_digest(self.model_dump(exclude={"name"}))

    def label(self) -> str:
        return self.name or f"environment {self.env_digest()}"


def spec_digest(data: dict[str, Any]) -> str:
    """First 16 hex digits of the sha256 of `data` as canonical JSON (the cache keys of environments)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class TaskInstance(BaseModel):
    """One SWE-bench-style task: a repository at a commit, an issue, and the tests that judge a fix."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    instance_id: str = Field(min_length=1)
    """Unique id, `owner__repo-NUMBER` by convention."""
    repo: str = Field(min_length=1)
    """`owner/name` of the repository."""
    base_commit: str = Field(min_length=7)
    """Commit the agent starts from."""
    problem_statement: str = Field(min_length=1)
    """The issue text the agent is given."""
    patch: str
    """Gold patch (a unified diff); never shown to the agent."""
    test_patch: str = ""
    """Patch adding/changing the tests that judge a fix; applied only at grading (by the eval script).
    Empty for a task whose tests are already in the repository (SWE-smith)."""
    FAIL_TO_PASS: list[str]
    """Tests that fail before the fix and must pass after it."""
    PASS_TO_PASS: list[str] = []
    """Tests that pass before and must still pass after."""
    version: str = ""
    """Environment version (SWE-bench)."""
    environment_setup_commit: str = ""
    """Commit the environment was built from (SWE-bench)."""
    hints_text: str = ""
    """Comments on the issue before the fix (not shown to the agent by default)."""
    created_at: str = ""
    """Creation time of the fix PR."""
    image: str = ""
    """Container image holding the environment (swebench 5.x)."""
    eval_script: str = ""
    """Bash script that applies the test patch and runs the tests between the swebench markers (5.x)."""
    log_parser: str = "parse_log_pytest"
    """Key of swebench's PARSER_REGISTRY that parses the test log (5.x)."""
    eval_type: Literal["pass_and_fail", "fail_only"] = "pass_and_fail"
    """swebench EvalType (5.x)."""
    history: Literal["full", "none"] = "full"
    """Git history the agent's sandbox keeps before base_commit: `full` (a real repository's past, as
    SWE-bench's images have it) or `none` (base_commit alone, no parent: for a synthetic bug commit whose
    parent is the fix, as in SWE-smith)."""
    environment: EnvironmentSpec | None = None
    """The environment the tests need (protege.environments); None = resolved from elsewhere."""

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        # SWE-bench stores these as JSON-encoded strings; accept both forms, reject anything else.
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"must be a list of test names or a JSON list string, got {value[:60]!r}"
                ) from err
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a list of test-name strings")
        return value

    @field_validator("patch", "test_patch")
    @classmethod
    def _is_diff(cls, value: str, info: Any) -> str:
        if info.field_name == "test_patch" and not value:
            return value
        if not value.strip():
            raise ValueError("is empty; expected a unified diff")
        if "diff --git " not in value and not value.lstrip().startswith("--- "):
            raise ValueError("is not a unified diff (no 'diff --git' or '---' header)")
        return value

    def to_swebench(self) -> dict[str, Any]:
        """The row as swebench expects it (FAIL_TO_PASS / PASS_TO_PASS as JSON strings)."""
        unset = {"environment"} if self.environment is None else set()
        row = self.model_dump(exclude=unset | ({"history"} if self.history == "full" else set()))
        row["FAIL_TO_PASS"] = json.dumps(self.FAIL_TO_PASS)
        row["PASS_TO_PASS"] = json.dumps(self.PASS_TO_PASS)
        return row

    @property
    def repo_dirname(self) -> str:
        """Directory name of the repository under `tasks.repos_dir` (`owner__name`)."""
        return self.repo.replace("/", "__")
