"""`protege docker up|down|status|env|images|demo-images`: the local Docker engine and images (protege.docker_engine)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from protege.docker_engine import (
    DEFAULT_CACHE_DIR,
    DEFAULT_STATE_DIR,
    LOCAL_BASE,
    EngineError,
    _image_exists,
    base_tarball,
    build_images,
    engine_host,
    stop_daemon,
    up,
)
from protege.environment_images import build_demo_images
from protege.image_refs import IMAGE_NAMES

# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _state(args: argparse.Namespace) -> Path:
    return Path(args.state_dir)


def _cli_up(args: argparse.Namespace) -> int:
    try:
        engine = up(_state(args), Path(args.cache_dir))
        if args.demo_images:
            build_demo_images(engine.base_image)
    except EngineError as err:
        print(f"docker: {err}", file=sys.stderr)
        return 1
    kind = "started by protege" if engine.managed else "already running"
    print(f"docker: engine {kind} at {engine.host}; base image {engine.base_image}")
    print(f"export DOCKER_HOST={engine.host}")
    return 0


def _cli_down(args: argparse.Namespace) -> int:
    try:
        print(stop_daemon(_state(args)))
    except EngineError as err:
        print(f"docker: {err}", file=sys.stderr)
        return 1
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    host, account = engine_host(_state(args))
    print(f"docker: {account}")
    if host is None:
        return 1
    os.environ["DOCKER_HOST"] = host
    print(f"base image {LOCAL_BASE}: {'present' if _image_exists(LOCAL_BASE) else 'absent'}")
    print(
        f"base tarball {base_tarball(Path(args.cache_dir))}: {'cached' if base_tarball(Path(args.cache_dir)).is_file() else 'absent'}"
    )
    return 0


def _cli_env(args: argparse.Namespace) -> int:
    host, account = engine_host(_state(args))
    if host is None:
        print(f"docker: {account}", file=sys.stderr)
        return 1
    print(f"export DOCKER_HOST={host}")
    return 0


def _torch_wheel_args(wheels: str) -> tuple[dict[str, str], object | None]:
    """Build args installing torch from a local wheel directory served on loopback (builds use --network host)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=wheels)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    return {"PIP_FIND_LINKS": url, "TORCH_INDEX_ARGS": ""}, server


def _cli_images(args: argparse.Namespace) -> int:
    import json

    server = None
    try:
        engine = up(_state(args), Path(args.cache_dir))
        build_args: dict[str, str] = {}
        if args.torch_wheels:
            build_args, server = _torch_wheel_args(args.torch_wheels)
        if args.cpu_trainer:
            build_args |= {"GPU_PACKAGES": "", "TRAINER_CONSTRAINTS": "requirements.lock"}
        base = args.base or (engine.base_image if engine.managed else None)
        if base == LOCAL_BASE:
            # bookworm's python is 3.11.2; one locked pin (soupsieve 4.1.2) declares >=3.11.5
            build_args["LOCK_PIP_ARGS"] = "--ignore-requires-python"
        unknown = [kind for kind in args.kinds if kind not in IMAGE_NAMES]
        if unknown:
            raise EngineError(f"unknown image kind '{unknown[0]}' (known: {', '.join(IMAGE_NAMES)})")
        results = build_images(args.kinds or list(IMAGE_NAMES), base, build_args)
    except EngineError as err:
        print(f"docker: {err}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.shutdown()
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(results, indent=2) + "\n")
    for kind, info in results.items():
        print(f"{kind}: {info['image']}  {info['size_mb']} MiB  {info['seconds']} s")
    return 0


def _cli_demo_images(args: argparse.Namespace) -> int:
    try:
        engine = up(_state(args), Path(args.cache_dir))
        for name in build_demo_images(engine.base_image, force=args.force):
            print(name)
    except EngineError as err:
        print(f"docker: {err}", file=sys.stderr)
        return 1
    return 0


def _default_wheels() -> str | None:
    """A directory of pip's find-links holding a torch CPU wheel (this machine's /opt/wheels), if any."""
    for entry in os.environ.get("PIP_FIND_LINKS", "").split():
        if Path(entry).is_dir() and any(Path(entry).glob("torch-*+cpu-*.whl")):
            return entry
    return None


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege docker up | down | status | env | images | demo-images`."""
    group = sub.add_parser("docker", help="a local Docker engine, the base image and the project's images")
    cmds = group.add_subparsers(dest="cmd", required=True)

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--state-dir",
            default=str(DEFAULT_STATE_DIR),
            help="managed dockerd's state (default: .protege/docker)",
        )
        parser.add_argument(
            "--cache-dir",
            default=str(DEFAULT_CACHE_DIR),
            help="base rootfs tarball cache (default: /var/cache/protege)",
        )
        return parser

    upp = common(
        cmds.add_parser("up", help="use a running daemon, else start one (root); make the base image")
    )
    upp.add_argument("--demo-images", action="store_true", help="also build the demo tasks' instance images")
    upp.set_defaults(func=_cli_up)
    common(cmds.add_parser("down", help="stop the daemon protege started")).set_defaults(func=_cli_down)
    common(cmds.add_parser("status", help="which daemon answers; base image present?")).set_defaults(
        func=_cli_status
    )
    common(cmds.add_parser("env", help="print `export DOCKER_HOST=...` for the live daemon")).set_defaults(
        func=_cli_env
    )
    img = common(
        cmds.add_parser("images", help="build images/*.Dockerfile tagged with the git SHA (make images)")
    )
    img.add_argument("kinds", nargs="*", metavar="KIND", help="agent, trainer (default: both)")
    img.add_argument(
        "--base", help="base image (default: the engine's: imported debootstrap locally, public otherwise)"
    )
    img.add_argument(
        "--torch-wheels",
        default=_default_wheels(),
        help="directory with the torch CPU wheel, served on loopback to the build",
    )
    img.add_argument(
        "--cpu-trainer", action="store_true", help="trainer without vllm/CUDA pins (a CPU machine)"
    )
    img.add_argument("--record", help="write {kind: image, seconds, size_mb} JSON here")
    img.set_defaults(func=_cli_images)
    demo = common(
        cmds.add_parser(
            "demo-images", help="build the demo tasks' instance images (protege-demo/<repo>:<version>)"
        )
    )
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    demo.set_defaults(func=_cli_demo_images)
