"""`protege services up|down|status|env`: the local S3 and MLflow servers (protege.services)."""

from __future__ import annotations

import argparse
import os
import sys

from protege.cli.common import load_cfg, profile_args
from protege.services import LocalServices, ServiceError

# --------------------------------------------------------------------------------------------------
# CLI: protege services up|down|status|env
# --------------------------------------------------------------------------------------------------


def _services(args: argparse.Namespace) -> LocalServices:

    cfg = load_cfg(args)
    return LocalServices(cfg.services, cfg.store)


def _cli_up(args: argparse.Namespace) -> int:
    from protege.store import StoreError

    services = _services(args)
    try:
        services.up()
    except (ServiceError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n# point clients at these services:")
    print(_exports(services))
    return 0


def _cli_down(args: argparse.Namespace) -> int:
    _services(args).down()
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    rows = _services(args).status()
    print(f"{'service':<8} {'pid':>8}  {'url':<26} {'health'}")
    for row in rows:
        pid = str(row.pid) if row.pid else "-"
        print(f"{row.name:<8} {pid:>8}  {row.url:<26} {'healthy' if row.healthy else row.detail}")
    return 0 if all(r.healthy for r in rows) else 1


def _cli_env(args: argparse.Namespace) -> int:
    print(_exports(_services(args)))
    return 0


def _exports(services: LocalServices) -> str:
    # A secret taken from the user's environment is not echoed back; the local default one is.
    env = services.env(include_secret="AWS_SECRET_ACCESS_KEY" not in os.environ)
    return "\n".join(f"export {key}={value}" for key, value in env.items())


def add_cli(sub: argparse._SubParsersAction) -> None:

    group = sub.add_parser("services", help="local s3rver + MLflow on loopback").add_subparsers(
        dest="cmd", required=True
    )
    commands = {
        "up": (_cli_up, "start s3rver and MLflow (idempotent) and print the env exports"),
        "down": (_cli_down, "stop them by pid (SIGTERM, then SIGKILL after a grace period)"),
        "status": (_cli_status, "print each service, pid, URL and health (exit 1 if any is unhealthy)"),
        "env": (_cli_env, "print the env exports that point clients at the services"),
    }
    for name, (func, text) in commands.items():
        parser = group.add_parser(name, help=text, description=text)
        profile_args(parser)
        parser.set_defaults(func=func)
