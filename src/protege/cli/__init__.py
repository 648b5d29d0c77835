"""`protege` command line. Each command group is one `_add_<group>` function; handlers import lazily so
`protege --help` stays fast (torch/trl/mlflow load only for the commands that need them).

Every error reaches the user as one line naming the bad item (file, instance, field, value) and an exit
code (EXIT_CODES); a traceback only with `--debug`. Options may stand anywhere among the positionals
(`protege tasks verify demo:all --workers 1 eval.workers=2`)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from protege.cli.common import BAD_INPUT, FAILED, INTERNAL, INTERRUPTED, CLIError, Parser, print_error
from protege.config import ConfigError

EXIT_CODES = """exit codes:
  0    success
  1    the command ran and found problems (tasks validate/verify, services status, compile --check)
  2    bad input: an argument, config field, task file or model path (the message names it)
  3    a service or phase failed while running (S3, MLflow, sandbox, training; the message says which)
  4    an unexpected internal error: rerun with --debug for the traceback
  130  interrupted (Ctrl-C)
"""
# OSErrors that mean "the path you gave is wrong", as opposed to the machine or network failing.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


# The command groups, in `protege --help` order: one module each under protege.cli, exposing `add_cli`.
# They import their phases lazily, so `protege --help` stays fast (no torch/trl/mlflow/kfp).
GROUPS = (
    "config",
    "tasks",
    "model",
    "evaluate",
    "compare",
    "services",
    "agent",
    "sft",
    "rl",
    "synth",
    "pipeline",
    "register",
    "docker",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="protege",
        description="SWE-Protégé: train a small model into a SWE agent that knows when to ask an expert.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error (accepted anywhere)"
    )
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"protege.cli.{group}").add_cli(sub)
    return parser


def describe_error(err: BaseException) -> tuple[str, int]:
    """The one-line message and exit code the CLI gives for an error a command raised."""
    from pydantic import ValidationError

    if isinstance(err, CLIError | ConfigError):
        return str(err), BAD_INPUT
    if isinstance(err, ValidationError):
        from protege.config import format_validation_error

        what = "config" if err.title.endswith("Config") else err.title
        return format_validation_error(err, what=what), BAD_INPUT
    if isinstance(err, UnicodeDecodeError):
        where = f"byte 0x{err.object[err.start : err.start + 1].hex()} at offset {err.start}"
        name = _file_being_read(err) or "input"
        return f"{name}: not {err.encoding} text ({where}); a binary file where text was expected?", BAD_INPUT
    if isinstance(err, json.JSONDecodeError):
        name = _file_being_read(err) or "input"
        return f"{name}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}", BAD_INPUT
    if type(err).__module__.startswith("yaml"):
        from protege.config import yaml_error_text

        return f"not valid YAML: {yaml_error_text(err)}", BAD_INPUT  # type: ignore[arg-type]
    if isinstance(err, OSError):
        text = f"{err.filename}: {err.strerror}" if err.filename else str(err) or type(err).__name__
        return text, BAD_INPUT if isinstance(err, _PATH_ERRORS) else FAILED
    if type(err).__module__.startswith("protege.") and str(err):
        # The phases' own error types: their messages are written for the user.
        return str(err), BAD_INPUT if isinstance(err, ValueError) else FAILED
    return (
        f"{type(err).__name__}: {str(err).strip() or '(no message)'} (rerun with --debug for the traceback)",
        INTERNAL,
    )


def _file_being_read(err: BaseException) -> str:
    """The file a decode or parse error came from: the innermost frame of its traceback holding an open
    text file or an existing file's Path (the error itself carries only the text)."""
    import io
    from pathlib import Path

    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.TextIOWrapper) and isinstance(value.name, str):
                return value.name
            if isinstance(value, Path) and value.is_file():
                return str(value)
    return ""


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (EXIT_CODES). Errors are printed, not raised, unless
    `--debug` is given anywhere on the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[: argv.index("--")] if "--" in argv else argv
    debug = "--debug" in head
    if debug:
        argv.remove("--debug")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error already printed on one line
        return stop.code if isinstance(stop.code, int) else BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the CLI's top: every error becomes one line and a code
        if debug:
            raise
        text, code = describe_error(err)
        print_error(text)
        return code


if __name__ == "__main__":
    sys.exit(main())
