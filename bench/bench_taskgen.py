"""`tasks generate` test-run speed: seconds per mutation run with the pytest fork server against the floor
measured in the same run, a plain `python -m pytest` subprocess per mutation (what the eval script does).

The same mutations of two bundled repositories run both ways, interleaved so load changes hit both
alike; the statuses must agree run by run. Ratio = subprocess median / fork-server median."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

RESULT = "taskgen_cpu"
REPOS = ("semverlite", "prioq")
MUTATIONS_PER_REPO = 8


def _measure(repo: str, root: Path) -> dict:
    from protege.taskgen.core import export_tree, resolve_repo, run_tests
    from protege.taskgen.generate import candidate_order, source_mutations
    from protege.taskgen.pytest_server import PytestServer

    repo_dir, _ = resolve_repo(f"demo:{repo}", root / "repos")
    tree = export_tree(repo_dir, "HEAD", root / repo)
    chosen = candidate_order(source_mutations(tree), seed=0)[:MUTATIONS_PER_REPO]
    plain, served, agree = [], [], 0
    with PytestServer() as server:
        server.run(tree)  # the server's own start is paid once per worker; not a mutation run
        for mutation in chosen:
            target = tree / mutation.path
            original = target.read_text()
            target.write_text(mutation.apply(original))
            started = time.monotonic()
            a = run_tests(tree)
            plain.append(time.monotonic() - started)
            started = time.monotonic()
            b = server.run(tree)
            served.append(time.monotonic() - started)
            target.write_text(original)
            agree += a.statuses == b.statuses
    return {"runs": len(chosen), "statuses_agree": agree, "subprocess_s": plain, "fork_server_s": served}


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-taskgen-") as tmp:
        per_repo = {repo: _measure(repo, Path(tmp)) for repo in REPOS}
    plain = [s for r in per_repo.values() for s in r["subprocess_s"]]
    served = [s for r in per_repo.values() for s in r["fork_server_s"]]
    return {
        "repos": list(REPOS),
        "runs": len(plain),
        "statuses_agree": sum(r["statuses_agree"] for r in per_repo.values()),
        "subprocess_median_s": round(statistics.median(plain), 3),
        "fork_server_median_s": round(statistics.median(served), 3),
        "speedup_vs_subprocess": round(statistics.median(plain) / statistics.median(served), 2),
        "per_repo": per_repo,
    }
