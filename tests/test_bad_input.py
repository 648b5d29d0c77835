"""Bad input, table-driven, through the real CLI entry point: each malformed config, task file, argument
or model path gives exactly one line of error output that names the bad item, a non-zero exit code
(cli.EXIT_CODES) and never a traceback. Most rows run `protege.cli.main` in process; a few run the
installed command as a subprocess, and `--debug` brings the traceback back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import protege
from protege.cli import main
from protege.demo import demo_tasks

SRC = Path(protege.__file__).resolve().parents[1]
BAD_INPUT, FAILED = 2, 3


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    """`{d}` is the directory of bad files written by `bad_files`; `{s3}` the overrides that reach
    the test's real s3rver; `{ok}` a valid one-task JSONL file; `{repos}` an empty repos dir."""
    names: tuple[str, ...]
    """Strings the one error line must contain (the bad item: file, instance, field, value)."""
    code: int = BAD_INPUT


def row(instance_id: str = "acme__lib-1", **changes) -> dict:
    patch = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"
    base = {
        "instance_id": instance_id,
        "repo": "acme/lib",
        "base_commit": "abc1234",
        "problem_statement": "fix",
        "patch": patch,
        "test_patch": patch,
        "FAIL_TO_PASS": ["t::a"],
        "PASS_TO_PASS": [],
    }
    return {k: v for k, v in (base | changes).items() if v is not None}


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


BAD_FILES: dict[str, str | bytes] = {
    # a per-repository environment spec file (protege.environments)
    "envs.yaml": "acme/lib:\n  python: three\n",
    # config files
    "off.yaml": "expert:\n  cache_mode: off\n",
    "syntax.yaml": "rl:\n  group_size: [4\n",
    "list.yaml": "- rl\n- sft\n",
    "binary.yaml": b"\x00\xff\xfe\x01rl: 1\n",
    "unknown.yaml": "rl:\n  group_sise: 4\n",
    "section.yaml": "rl: 3\n",
    "inf.yaml": "agent:\n  sandbox:\n    command_timeout_s: .inf\n",
    "negative.yaml": "eval:\n  workers: -2\n",
    # task files
    "binary.jsonl": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe",
    "badline.jsonl": "{not json\n",
    "missing.jsonl": jsonl(row(base_commit=None)),
    "wrongtype.jsonl": jsonl(row(FAIL_TO_PASS=5)),
    "notdiff.jsonl": jsonl(row(patch="just words")),
    "dup.jsonl": jsonl(row(), row()),
    "notobject.jsonl": "[1, 2]\n",
    "empty.jsonl": "\n",
    "badjson.json": '{"instances": [',
    "dict.json": '{"rows": 3}',
    "tasks.txt": "hello\n",
    "corrupt.parquet": b"PAR1 this is not parquet",
    "short.jsonl": jsonl(row(base_commit="abc")),
    "script.json": "[{bad\n",
    # model directories
    "notamodel/weights.bin": b"\x00",
    # protege compare (issue 19)
    "variants-bad-override.yaml": "variants:\n  - {name: a, model: tiny, overrides: [agent.forced_ask.mode=sometimes]}\n",
    "variants-bad-name.yaml": "variants:\n  - {name: 'a b', model: tiny}\n",
    "variants-ok.yaml": "variants:\n  - {name: a, model: tiny}\n",
    "excluded-no-reason.yaml": "- instance_id: protege-demo__prioq-1\n",
    # an empty results dir for `report`
    "noresults/.keep": "",
}


def build_cases() -> list[Case]:
    d = "{d}"
    show = ("config", "show")
    cases = [
        # ---- config: dotted overrides -------------------------------------------------------------
        Case(
            "override-yaml-off", (*show, "expert.cache_mode=off"), ("expert.cache_mode", 'quote it ("off")')
        ),
        Case(
            "override-inf-timeout",
            (*show, "agent.sandbox.command_timeout_s=.inf"),
            ("agent.sandbox.command_timeout_s", "finite", "got inf"),
        ),
        Case("override-nan", (*show, "rl.learning_rate=.nan"), ("rl.learning_rate", "finite")),
        Case("override-negative-lr", (*show, "sft.learning_rate=-1e-5"), ("sft.learning_rate", "-1e-5")),
        Case("override-negative-seed", (*show, "sft.seed=-1"), ("sft.seed", "got -1")),
        Case("override-negative-weight", (*show, "rl.stage1.w_sim=-2"), ("rl.stage1.w_sim",)),
        Case(
            "override-negative-timeouts-dict",
            (*show, "pipeline.timeouts_s.sft=-5"),
            ("pipeline.timeouts_s.sft",),
        ),
        Case(
            "override-huge-duration", (*show, "rl.rollout_timeout_s=99999999999.0"), ("rl.rollout_timeout_s",)
        ),
        Case("override-zero-count", (*show, "eval.workers=0"), ("eval.workers", "got 0")),
        Case("override-string-count", (*show, "eval.workers=many"), ("eval.workers", "'many'")),
        Case("override-yaml-no-string", (*show, "tasks.train=no"), ("tasks.train", "booleans")),
        Case("override-unknown-field", (*show, "rl.nope=1"), ("rl.nope", "unknown field")),
        Case("override-no-equals", (*show, "nonsense"), ("'nonsense'", "dotted.key=value")),
        Case("override-bad-yaml", (*show, "rl.group_size=[1"), ("rl.group_size=[1",)),
        Case(
            "override-cross-field", (*show, "rl.stage_one_steps=10", "rl.total_steps=5"), ("stage_one_steps",)
        ),
        Case("override-gate-order", (*show, "rl.stage1.gate_loop_zero_at=-0.1"), ("gate_loop_zero_at",)),
        Case("override-section-scalar", (*show, "rl=3"), ("field rl:", "got 3")),
        # ---- config: YAML files -------------------------------------------------------------------
        Case(
            "file-yaml-off",
            (*show, "--config", f"{d}/off.yaml"),
            ("expert.cache_mode", f"{d}/off.yaml", '"off"'),
        ),
        Case("file-syntax", (*show, "--config", f"{d}/syntax.yaml"), (f"{d}/syntax.yaml", "not valid YAML")),
        Case("file-not-mapping", (*show, "--config", f"{d}/list.yaml"), (f"{d}/list.yaml", "mapping")),
        Case("file-binary", (*show, "--config", f"{d}/binary.yaml"), (f"{d}/binary.yaml",)),
        Case("file-missing", (*show, "--config", f"{d}/nope.yaml"), (f"{d}/nope.yaml",)),
        Case("file-directory", (*show, "--config", d), (d,)),
        Case(
            "file-unknown-key",
            (*show, "--config", f"{d}/unknown.yaml"),
            ("rl.group_sise", f"{d}/unknown.yaml"),
        ),
        Case(
            "file-section-scalar",
            (*show, "--config", f"{d}/section.yaml"),
            ("field rl:", f"{d}/section.yaml"),
        ),
        Case("file-inf", (*show, "--config", f"{d}/inf.yaml"), ("command_timeout_s", f"{d}/inf.yaml")),
        Case("file-negative", (*show, "--config", f"{d}/negative.yaml"), ("eval.workers", "got -2")),
        Case("profile-unknown", (*show, "--profile", "nope"), ("'nope'",)),
        Case("profile-unknown-verify", ("tasks", "verify", "--profile", "../local"), ("'../local'",)),
        # ---- task files ---------------------------------------------------------------------------
        Case("tasks-binary", ("tasks", "list", f"{d}/binary.jsonl"), (f"{d}/binary.jsonl", "UTF-8")),
        Case("tasks-binary-verify", ("tasks", "verify", f"{d}/binary.jsonl"), (f"{d}/binary.jsonl",)),
        Case(
            "tasks-bad-json-line", ("tasks", "list", f"{d}/badline.jsonl"), (f"{d}/badline.jsonl:1", "JSON")
        ),
        Case("tasks-missing-field", ("tasks", "list", f"{d}/missing.jsonl"), ("acme__lib-1", "base_commit")),
        Case("tasks-wrong-type", ("tasks", "list", f"{d}/wrongtype.jsonl"), ("acme__lib-1", "FAIL_TO_PASS")),
        Case("tasks-not-a-diff", ("tasks", "list", f"{d}/notdiff.jsonl"), ("acme__lib-1", "patch")),
        Case("tasks-short-commit", ("tasks", "list", f"{d}/short.jsonl"), ("acme__lib-1", "base_commit")),
        Case("tasks-duplicate", ("tasks", "list", f"{d}/dup.jsonl"), (f"{d}/dup.jsonl:2", "duplicate")),
        Case("tasks-not-object", ("tasks", "list", f"{d}/notobject.jsonl"), (f"{d}/notobject.jsonl:1",)),
        Case("tasks-empty", ("tasks", "list", f"{d}/empty.jsonl"), (f"{d}/empty.jsonl", "no task")),
        Case("tasks-bad-json", ("tasks", "list", f"{d}/badjson.json"), (f"{d}/badjson.json", "JSON")),
        Case("tasks-json-not-list", ("tasks", "list", f"{d}/dict.json"), (f"{d}/dict.json",)),
        Case("tasks-unknown-format", ("tasks", "list", f"{d}/tasks.txt"), (f"{d}/tasks.txt", "format")),
        Case("tasks-corrupt-parquet", ("tasks", "list", f"{d}/corrupt.parquet"), (f"{d}/corrupt.parquet",)),
        Case("tasks-not-a-task-dir", ("tasks", "list", f"{d}/noresults"), (f"{d}/noresults",)),
        Case("tasks-missing-file", ("tasks", "list", f"{d}/nope.jsonl"), (f"{d}/nope.jsonl",)),
        Case("tasks-demo-split", ("tasks", "list", "demo:nope"), ("demo:nope",)),
        # a missing repository is one broken instance, not a stopped run (tests/test_verify_errors.py)
        Case(
            "tasks-missing-env-spec-file",
            ("tasks", "verify", "{ok}", f"agent.sandbox.environments.spec_file={d}/nope.yaml"),
            (f"{d}/nope.yaml", "spec_file"),
        ),
        Case(
            "tasks-bad-env-spec",
            ("tasks", "verify", "{ok}", f"agent.sandbox.environments.spec_file={d}/envs.yaml"),
            (f"{d}/envs.yaml", "acme/lib", "python", "'three'"),
        ),
        Case(
            "tasks-unknown-instance",
            ("agent", "run", "--task", "nope-1", "--policy", "scripted"),
            ("'nope-1'",),
        ),
        Case(
            "tasks-unknown-instance-id",
            ("synth", "--ids", "nope-9", "--no-track", "--no-upload", "--out", f"{d}/synth-out"),
            ("nope-9",),
        ),
        # ---- CLI arguments ------------------------------------------------------------------------
        Case("arg-negative-max-episodes", ("synth", "--max-episodes", "-3"), ("--max-episodes", "-3")),
        Case("arg-zero-workers", ("tasks", "verify", "demo:all", "--workers", "0"), ("--workers", "got 0")),
        Case("arg-word-workers", ("tasks", "verify", "--workers", "two"), ("--workers", "'two'")),
        Case(
            "arg-unknown-option", ("tasks", "validate", "demo:all", "--bogus"), ("--bogus", "tasks validate")
        ),
        Case("arg-unknown-command", ("nonsense",), ("'nonsense'",)),
        Case("arg-missing-subcommand", ("tasks",), ("protege tasks", "cmd")),
        Case("arg-missing-required", ("eval",), ("--model",)),
        Case("arg-bad-choice", ("rl", "--stage", "3", "--model", "tiny"), ("--stage", "3")),
        Case("arg-gpu-count", ("submit", "--gpu-count", "-1"), ("--gpu-count",)),
        Case(
            "generate-not-a-repo", ("tasks", "generate", f"{d}/nope"), (f"{d}/nope", "not a git repository")
        ),
        Case(
            "generate-unknown-demo",
            ("tasks", "generate", "demo:nope"),
            ("demo:nope", "no bundled repository"),
        ),
        Case("generate-zero-n", ("tasks", "generate", "demo:all", "--n", "0"), ("--n", "got 0")),
        Case(
            "mine-not-a-repo", ("tasks", "mine", f"{d}/nope", "HEAD"), (f"{d}/nope", "not a git repository")
        ),
        Case(
            "mine-unknown-commit",
            ("tasks", "mine", "demo:unitconv", "nosuch", "tasks.repos_dir={repos}"),
            ("no commit 'nosuch'",),
        ),
        # options after positionals: parsed (the override after the option is reached and judged)
        Case(
            "arg-option-after-positional",
            ("tasks", "verify", "demo:eval", "--workers", "1", "eval.attempts=0"),
            ("eval.attempts", "got 0"),
        ),
        Case(
            "arg-option-after-override",
            (*show, "rl.group_size=1", "--profile", "cluster"),
            ("rl.group_size", "got 1"),
        ),
        Case(
            "arg-node-selector-json",
            ("submit", "--gpu-node-selector", "{bad", "--host", "http://127.0.0.1:9"),
            ("--gpu-node-selector", "not JSON"),
        ),
        Case("arg-expert-spec", ("eval", "--model", "tiny", "--expert", ":x"), ("--expert", "':x'")),
        Case(
            "file-policy-script-json",
            (
                "agent",
                "run",
                "--task",
                "protege-demo__csvcols-1",
                "--policy",
                "scripted",
                "--script",
                f"{d}/script.json",
            ),
            (f"{d}/script.json",),
        ),
        # ---- model paths --------------------------------------------------------------------------
        Case(
            "model-missing-dir",
            ("eval", "--model", f"{d}/no-such-model", "--no-track", "--no-upload", "--out", f"{d}/eval-out"),
            (f"{d}/no-such-model",),
        ),
        Case(
            "model-dir-without-config",
            ("eval", "--model", f"{d}/notamodel", "--no-track", "--no-upload", "--out", f"{d}/eval-out2"),
            (f"{d}/notamodel", "config.json"),
        ),
        Case(
            "model-s3-missing",
            (
                "eval",
                "--model",
                "s3://{bucket}/no/such/model",
                "--no-track",
                "--out",
                f"{d}/eval-out3",
                "{s3}",
            ),
            ("s3://{bucket}/no/such/model",),
        ),
        Case("report-empty-dir", ("report", f"{d}/noresults"), (f"{d}/noresults",)),
        # ---- protege compare --------------------------------------------------------------------------
        Case(
            "compare-bad-variant-override",
            ("compare", "--variants", f"{d}/variants-bad-override.yaml", "--no-track", "--no-upload"),
            ("variant a", "agent.forced_ask.mode", "'sometimes'"),
        ),
        Case(
            "compare-bad-variant-name",
            ("compare", "--variants", f"{d}/variants-bad-name.yaml", "--no-track", "--no-upload"),
            (f"{d}/variants-bad-name.yaml", "variants[0]", "'a b'"),
        ),
        Case(
            "compare-exclusion-without-reason",
            (
                "compare",
                "--variants",
                f"{d}/variants-ok.yaml",
                "--exclusions",
                f"{d}/excluded-no-reason.yaml",
                "--no-track",
                "--no-upload",
                "tasks.repos_dir={repos}",
            ),
            (f"{d}/excluded-no-reason.yaml", "protege-demo__prioq-1", "no reason"),
        ),
    ]
    return cases


CASES = build_cases()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    for name, content in BAD_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    (root / "ok.jsonl").write_text(jsonl(row()))
    (root / "repos").mkdir()
    return root


def expand(text: str, root: Path, s3_overrides: list[str], bucket: str) -> list[str]:
    if text == "{s3}":
        return s3_overrides
    return [
        text.replace("{d}", str(root))
        .replace("{ok}", str(root / "ok.jsonl"))
        .replace("{repos}", str(root / "repos"))
        .replace("{bucket}", bucket)
    ]


@pytest.fixture(scope="module")
def context(bad_files: Path, s3_server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = s3_server.store_config()
    overrides = [
        f"store.endpoint={store.endpoint}",
        f"store.access_key={store.access_key.get_secret_value()}",
        f"store.secret_key={store.secret_key.get_secret_value()}",
        f"store.bucket={store.bucket}",
    ]
    data = tmp_path_factory.mktemp("data")
    # Phases write their work under services.data_dir; demo repos and models stay out of the checkout.
    common = [f"services.data_dir={data}", f"model.cache_dir={data / 'models'}"]
    return {"root": bad_files, "s3": overrides, "bucket": store.bucket, "common": common}


def argv_of(case: Case, context: dict) -> list[str]:
    argv = [a for part in case.argv for a in expand(part, context["root"], context["s3"], context["bucket"])]
    commands_with_config = {"config", "tasks", "eval", "synth", "agent", "rl"}
    takes_overrides = argv[0] in commands_with_config and argv[:2] not in (
        ["tasks", "list"],
        ["tasks", "validate"],
    )
    usage_error = case.id.startswith("arg-") and case.id != "arg-option-after-positional"
    if takes_overrides and not usage_error and not case.id.startswith("override-"):
        argv += context["common"]
    return argv


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_naming_the_item(case: Case, context: dict, capsys, monkeypatch) -> None:
    monkeypatch.chdir(context["root"])  # nothing lands in the checkout
    code = main(argv_of(case, context))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == case.code, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and "Traceback" not in captured.err + captured.out
    for name in case.names:
        expanded = expand(name, context["root"], [], context["bucket"])[0]
        assert expanded in lines[0], f"{expanded!r} not named in: {lines[0]}"


def test_the_table_is_large_and_covers_every_kind() -> None:
    kinds = {case.id.split("-")[0] for case in CASES}
    assert len(CASES) >= 40 and {"override", "file", "profile", "tasks", "arg", "model"} <= kinds


# --------------------------------------------------------------------------------------------------
# the installed command, as a subprocess
# --------------------------------------------------------------------------------------------------


def protege(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(SRC), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [sys.executable, "-m", "protege.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.parametrize(
    "argv, named",
    [
        (("tasks", "list", "{d}/binary.jsonl"), "{d}/binary.jsonl"),
        (("config", "show", "--config", "{d}/off.yaml"), "expert.cache_mode"),
        (("synth", "--max-episodes", "-3"), "--max-episodes"),
        (("config", "show", "agent.sandbox.command_timeout_s=.inf"), "command_timeout_s"),
    ],
)
def test_subprocess_one_line_no_traceback(argv, named, bad_files: Path) -> None:
    done = protege(*(a.replace("{d}", str(bad_files)) for a in argv), cwd=bad_files)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == BAD_INPUT and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert named.replace("{d}", str(bad_files)) in lines[0]


def test_debug_anywhere_brings_the_traceback_back(bad_files: Path) -> None:
    done = protege("tasks", "list", str(bad_files / "binary.jsonl"), "--debug", cwd=bad_files)
    assert done.returncode != 0 and "Traceback" in done.stderr and "TaskSetError" in done.stderr


def test_a_decode_error_names_the_file_it_came_from(bad_files: Path) -> None:
    # Errors from readers that do not name their file (UnicodeDecodeError carries only the bytes).
    from protege.cli import describe_error

    def read(path: Path) -> str:
        with path.open(encoding="utf-8") as handle:
            return handle.read()

    for reader in (read, lambda path: path.read_text(encoding="utf-8")):
        with pytest.raises(UnicodeDecodeError) as caught:
            reader(bad_files / "binary.jsonl")
        text, code = describe_error(caught.value)
        assert text.startswith(f"{bad_files / 'binary.jsonl'}: not utf-8 text (byte 0x89 at offset 0)")
        assert code == BAD_INPUT
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads((bad_files / "script.json").read_text())
    assert describe_error(caught.value) == (
        "input: not valid JSON at line 1, column 3: Expecting property name enclosed in double quotes",
        BAD_INPUT,
    )


@pytest.mark.slow
def test_sft_on_a_binary_dataset_names_the_file(bad_files: Path) -> None:
    data = bad_files / "sft-data"
    done = protege(
        "sft",
        "--dataset",
        str(bad_files / "binary.jsonl"),
        "--no-track",
        "--no-upload",
        f"services.data_dir={data}",
        f"model.cache_dir={data / 'models'}",
        cwd=bad_files,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == BAD_INPUT and "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith(f"error: {bad_files / 'binary.jsonl'}: not utf-8 text")


def test_an_unexpected_error_is_one_line_with_its_type_and_the_debug_hint(monkeypatch, capsys) -> None:
    import protege.tasksets

    def broken(*args, **kwargs):
        raise KeyError("index")

    monkeypatch.setattr(protege.tasksets, "load_task_set", broken)
    assert main(["tasks", "list", "demo:all"]) == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "error: KeyError: 'index' (rerun with --debug for the traceback)"


def test_options_anywhere_parse_the_same(bad_files: Path) -> None:
    from protege.cli import build_parser

    orders = [
        ["tasks", "verify", "demo:eval", "--workers", "2", "--profile", "local", "eval.attempts=2"],
        ["tasks", "verify", "--workers", "2", "demo:eval", "eval.attempts=2", "--profile", "local"],
        ["tasks", "verify", "--profile", "local", "demo:eval", "--workers", "2", "eval.attempts=2"],
    ]
    parsed = [vars(build_parser().parse_args(argv)) for argv in orders]
    assert all(p == parsed[0] for p in parsed[1:])
    assert parsed[0]["path"] == "demo:eval" and parsed[0]["overrides"] == ["eval.attempts=2"]


def test_verify_without_a_path_takes_a_lone_override_as_one(capsys) -> None:
    # PATH is optional: `tasks verify eval.attempts=0` is the override, judged (not a missing file).
    assert main(["tasks", "verify", "eval.attempts=0", "--workers", "1"]) == BAD_INPUT
    (line,) = capsys.readouterr().err.splitlines()
    assert "field eval.attempts" in line and "got 0" in line


def test_a_valid_task_set_still_loads(bad_files: Path, capsys) -> None:
    # The table's files are bad for the stated reason only: the same rows, fixed, load.
    assert main(["tasks", "validate", str(bad_files / "ok.jsonl")]) == 0
    assert demo_tasks("eval")
