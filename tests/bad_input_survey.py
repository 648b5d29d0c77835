"""Survey, not a test: run tests/test_bad_input.py's table against whichever protege is first on
PYTHONPATH and classify each row: `traceback` (an exception escaped main, as the console script would
print it), `clean` (non-zero exit, one error line naming the item) or `not_clean` (accepted, several
lines, or the item not named). How the "before" figure of the table was measured:

    PYTHONPATH=<checkout>/src python tests/bad_input_survey.py <worktree root>
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path


def classify(case, argv: list[str], main, names: list[str]) -> tuple[str, str]:
    err, out = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
        except BaseException as error:  # escaped main(): the console script prints a traceback
            escaped, code = error, 1
            traceback.print_exc(file=err)
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    if escaped is not None or "Traceback" in text:
        return "traceback", f"{type(escaped).__name__}: {str(escaped)[:100]}"
    if code != 0 and len(lines) == 1 and all(name in lines[0] for name in names):
        return "clean", lines[0][:120]
    return "not_clean", f"code={code} lines={len(lines)} first={lines[0][:100] if lines else ''}"


def survey(worktree: str) -> dict[str, list[str]]:
    sys.path.insert(0, worktree)  # for `tests.test_bad_input`
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import tests.test_bad_input as table
    from protege.cli import main
    from protege.config import ServicesConfig, StoreConfig
    from protege.services import LocalServices, free_port

    root = Path(tempfile.mkdtemp(prefix="bad-"))
    for name, content in table.BAD_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    (root / "ok.jsonl").write_text(table.jsonl(table.row()))
    (root / "repos").mkdir()
    data = root / "_data"
    services = LocalServices(
        ServicesConfig(data_dir=str(data / "svc"), s3_port=free_port(), mlflow_port=free_port()),
        StoreConfig(access_key="AK", secret_key="SK", bucket="protege-test"),
        emit=lambda line: None,
    )
    services.start_s3()
    store = services.store_config()
    context = {
        "root": root,
        "bucket": store.bucket,
        "common": [f"services.data_dir={data}", f"model.cache_dir={data / 'models'}"],
        "s3": [
            f"store.endpoint={store.endpoint}",
            "store.access_key=AK",
            "store.secret_key=SK",
            f"store.bucket={store.bucket}",
        ],
    }
    os.chdir(root)
    tally: dict[str, list[str]] = {"traceback": [], "clean": [], "not_clean": []}
    try:
        for case in table.CASES:
            names = [table.expand(n, root, [], store.bucket)[0] for n in case.names]
            kind, detail = classify(case, table.argv_of(case, context), main, names)
            tally[kind].append(case.id)
            print(f"{kind:10} {case.id:34} {detail}", flush=True)
    finally:
        services.down()
    return tally


if __name__ == "__main__":
    result = survey(sys.argv[1])
    print(json.dumps({kind: len(ids) for kind, ids in result.items()}), "of", sum(map(len, result.values())))
