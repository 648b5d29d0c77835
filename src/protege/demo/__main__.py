"""`python -m protege.demo`: regenerate or check `tasks.jsonl`, or build the demo repositories.

python -m protege.demo --write-jsonl        # rewrite src/protege/demo/tasks.jsonl
python -m protege.demo --check              # exit 1 if tasks.jsonl is stale
python -m protege.demo --build .protege/repos
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from protege.demo.build import build_demo_repos
from protege.demo.spec import JSONL_PATH
from protege.demo.taskset import generate_jsonl, write_jsonl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protege.demo", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write-jsonl", action="store_true", help=f"regenerate {JSONL_PATH}")
    action.add_argument("--check", action="store_true", help="exit 1 when tasks.jsonl is out of date")
    action.add_argument("--build", metavar="DEST", type=Path, help="build every demo repository under DEST")
    args = parser.parse_args(argv)
    if args.write_jsonl:
        print(f"wrote {write_jsonl()}")
    elif args.check:
        current = JSONL_PATH.read_text(encoding="utf-8") if JSONL_PATH.is_file() else ""
        if generate_jsonl() != current:
            print(f"{JSONL_PATH} is stale: run python -m protege.demo --write-jsonl", file=sys.stderr)
            return 1
        print(f"{JSONL_PATH} is up to date")
    else:
        for repo, path in build_demo_repos(args.build).items():
            print(f"{repo}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
