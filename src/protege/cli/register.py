"""`protege lineage MODEL[@alias|/version]`: the chain from a registered model version back to its inputs
(see protege.register)."""

from __future__ import annotations

import argparse

from protege.cli.common import CLIError, load_cfg, profile_args
from protege.register import LineageError, chain


def _lineage_cli(args: argparse.Namespace) -> int:
    from protege.tracking import Tracker, TrackingError

    try:
        for line in chain(Tracker(load_cfg(args).tracking), args.model):
            print(line)
    except (LineageError, TrackingError) as err:
        raise CLIError(str(err)) from err
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege lineage MODEL[@alias|/version]`."""

    parser = sub.add_parser(
        "lineage", help="print a registered model version's chain back to runs, data and KFP run"
    )
    parser.add_argument("model", help="NAME@ALIAS, NAME/VERSION or NAME (= NAME@champion)")
    profile_args(parser)
    parser.set_defaults(func=_lineage_cli)
