"""Task instances in the SWE-bench format, and task sets.

A `TaskInstance` carries exactly SWE-bench's columns plus the swebench 5.x spec columns (`image`,
`eval_script`, `log_parser`, `eval_type`), so `swebench.harness.test_spec.make_test_spec` and
`get_eval_report` accept `instance.to_swebench()` unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protege.environments import EnvironmentSpec

TEST_OUTPUT_START = ">>>>> Start Test Output"
TEST_OUTPUT_END = ">>>>> End Test Output"


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
    test_patch: str
    """Patch adding/changing the tests that judge a fix; applied only at grading."""
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
    def _is_diff(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; expected a unified diff")
        if "diff --git " not in value and not value.lstrip().startswith("--- "):
            raise ValueError("is not a unified diff (no 'diff --git' or '---' header)")
        return value

    def to_swebench(self) -> dict[str, Any]:
        """The row as swebench expects it (FAIL_TO_PASS / PASS_TO_PASS as JSON strings)."""
        row = self.model_dump(exclude={"environment"} if self.environment is None else set())
        row["FAIL_TO_PASS"] = json.dumps(self.FAIL_TO_PASS)
        row["PASS_TO_PASS"] = json.dumps(self.PASS_TO_PASS)
        return row

    @property
    def repo_dirname(self) -> str:
        """Directory name of the repository under `tasks.repos_dir` (`owner__name`)."""
        return self.repo.replace("/", "__")
