"""`protege demo`: an alias of `protege run` (protege.kfp_local), the whole Kubeflow pipeline run locally
through kfp.local on the bundled tasks, with the summary table at the end.

There is one end-to-end chain, the pipeline: `make demo` = `make setup`, `protege services up`,
`protege demo` (= `protege run --profile local`).

    make demo
    protege demo sft.max_steps=20
"""

from __future__ import annotations

import argparse


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege demo`: the same flags and behaviour as `protege run`."""
    from protege.kfp_local import add_run_args, run_cli

    demo = sub.add_parser(
        "demo",
        help="= `protege run`: the whole pipeline locally through kfp.local (needs `protege services up`)",
    )
    add_run_args(demo)
    demo.set_defaults(func=run_cli)
