"""The bundled demo task set: 12 small pure-Python repositories with one real bug each, and `deps`.

Package data, one task per repository (8 train, 4 eval, no repository on both sides; `demo:all` is those
12, which need nothing but pytest). `demo:deps` is one more, `pagination`, whose tests import a package
from the index (more-itertools) and whose package sits under `src/`: its task.yaml's `environment` is the
built-in spec that protege.environments builds it a venv (or Docker images) from.

    repos/<name>/              the repository's files at base_commit (the buggy state, its tests)
    tasks/<name>/task.yaml     instance id, split, bug kind, FAIL_TO_PASS / PASS_TO_PASS, history
    tasks/<name>/issue.md      the problem statement, written as a GitHub issue
    tasks/<name>/gold.patch    the fix (never committed to the repository)
    tasks/<name>/test.patch    the tests that judge a fix
    tasks.jsonl                generated SWE-bench 5.x rows with a `split` column (committed)

A committed path part starting with '.' is stored as 'dot-...' (`.gitignore` -> `dot-gitignore`)
because packaging globs skip hidden files.

`build_demo_repos(dest)` makes each repository a real git history at `dest/protege-demo__<name>`
with fixed identity and dates, so base_commit SHAs are identical everywhere. `demo_tasks(split)`
returns the TaskInstances. Regenerate the JSONL with `python -m protege.demo --write-jsonl`.
"""

from protege.demo.build import DemoBuildError, build_demo_repos
from protege.demo.taskset import demo_tasks, generate_jsonl, write_jsonl

__all__ = ["DemoBuildError", "build_demo_repos", "demo_tasks", "generate_jsonl", "write_jsonl"]
