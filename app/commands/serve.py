"""``mixdiff serve``: the HTTP server and its worker pool.

Every ``Settings`` field is a flag here (``--cores-per-worker``, ``--compile/--no-compile``)
and an environment variable (``MIXDIFF_CORES_PER_WORKER``); a flag wins over the
variable. The flags are generated from the settings, so the two never drift apart.
"""

from __future__ import annotations

import argparse
import socket
import sys
import types
import typing

from app.settings import Settings, model_folder


def _flag_type(annotation) -> tuple[str, object]:
    """(kind, converter) for a settings annotation: 'bool', 'list' or 'scalar'."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
    if annotation is bool:
        return "bool", None
    if typing.get_origin(annotation) is list:
        return "list", lambda text: [item.strip() for item in text.split(",") if item.strip()]
    return "scalar", annotation


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP server",
        description=__doc__.split("\n\n")[0],
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind, convert = _flag_type(field.annotation)
        default = field.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        help_text = f"{field.description} (default: {shown}; env MIXDIFF_{name.upper()})".replace("%", "%%")
        common = {"dest": name, "default": argparse.SUPPRESS}  # absent flags leave env and defaults alone
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text, **common)
        elif kind == "list":
            parser.add_argument(flag, type=convert, metavar="A,B", help="comma-separated; " + help_text, **common)
        else:
            parser.add_argument(flag, type=convert, help=help_text, **common)
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The flags given, over the ``MIXDIFF_*`` environment, over the defaults."""
    return Settings(**{name: value for name, value in vars(args).items() if name in Settings.model_fields})


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before any worker starts: a port in use fails at once."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from app.api.server import create_app

    try:
        settings = settings_from_args(args)
        model_folder(settings.model)  # a model that is no pipeline folder is refused before any worker starts
        app = create_app(settings)
    except (ValidationError, ValueError) as exc:
        print(f"mixdiff serve: {exc}", file=sys.stderr)
        return 2
    try:
        sock = _listen(settings.host, settings.port)
    except OSError as exc:
        print(f"mixdiff serve: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 2

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # SIGTERM/SIGINT: refuse new work at once; uvicorn then waits for open
            # requests and the lifespan drains the queue within shutdown_grace.
            try:
                app.state.pool.stop_admitting()
                app.state.board.draining()  # with Redis: queued jobs go to the other replicas now
            finally:
                super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )
    Server(config).run(sockets=[sock])
    return 0
