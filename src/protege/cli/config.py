"""`protege config show`: the resolved config of a profile."""

from __future__ import annotations

import argparse

from protege.cli.common import load_cfg, profile_args


def _config_show(args: argparse.Namespace) -> int:
    import yaml

    from protege.config import public_dict

    cfg = load_cfg(args)
    print(yaml.safe_dump(public_dict(cfg), sort_keys=False, allow_unicode=True), end="")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("config", help="show and check configuration").add_subparsers(
        dest="cmd", required=True
    )
    show = group.add_parser("show", help="print the resolved config of a profile (secrets masked)")
    profile_args(show)
    show.set_defaults(func=_config_show)
