"""``astroscale-fl serve``: arguments, model loading, the listening socket, uvicorn."""

from __future__ import annotations

import argparse
import math
import socket
import sys
from pathlib import Path

from astroscale_fl.errors import DataError, UserArgumentParser, one_line, report_user_errors
from astroscale_fl.serve.middleware import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES
from astroscale_fl.serve.service import DEFAULT_MAX_BATCH

DEFAULT_TASK = "survey_redshift"
#: Connections (and in-flight requests) beyond this get 503 at once (uvicorn's ``limit_concurrency``).
DEFAULT_MAX_CONNECTIONS = 1000
#: Pending connections the kernel queues (uvicorn's default).
BACKLOG = 2048


def resolve_model_dir(model: str | None) -> Path:
    """``--model``: an exported model directory, or a task name meaning ``models/<task>/latest``."""
    model = model or DEFAULT_TASK
    path = Path(model)
    if path.is_dir():
        return path
    looks_like_task = "/" not in model and "\\" not in model and not model.startswith(".")
    if looks_like_task:
        latest = Path("models") / model / "latest"
        if latest.is_dir():
            return latest
        raise DataError(f"no published model for task {model} at {latest}; make one with `astroscale-fl train task={model}` "
                        "or give --model DIR")
    raise DataError(f"model directory not found: {model}; make one with `astroscale-fl train task=...` "
                    f"(or give a task name for models/<task>/latest)")


def parser() -> argparse.ArgumentParser:
    """The ``astroscale-fl serve`` argument parser."""
    p = UserArgumentParser(
        prog="astroscale-fl serve",
        description="Serve an exported model over HTTP: POST /predict (one object), POST /predict/batch "
        "(a list), GET /healthz, GET /metrics (Prometheus). Request fields are the model card's inputs "
        "(`astroscale-fl predict --model DIR --list-inputs`); POST bodies must be Content-Type: application/json. "
        "The model directory is verified against the SHA-256 its card records before anything is served.",
    )
    p.add_argument("--model", default=None, metavar="DIR|TASK",
                   help=f"exported model directory, or a task name for models/<task>/latest (default: {DEFAULT_TASK})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 exposes the "
                   "unauthenticated service on every interface: put a reverse proxy with TLS in front instead)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080; 0 picks a free one, printed at start)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger request bodies get 413 (default: 1 MiB)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="most rows in one /predict/batch request; more get 413 (default: 10000)")
    p.add_argument("--body-timeout-s", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                   help=f"a request body not complete this many seconds after its headers gets 408 and the connection "
                   f"is closed; a connection whose request headers take longer is closed (default: {DEFAULT_BODY_TIMEOUT_S:g})")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   help=f"open connections or in-flight requests beyond this get 503 (default: {DEFAULT_MAX_CONNECTIONS})")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1; one star gains nothing from more)")
    p.add_argument("--micro-batch", action="store_true",
                   help="coalesce concurrent single-star requests into one forward pass (answers agree with "
                   "`predict` to float32 rounding instead of bit for bit)")
    p.add_argument("--batch-window-ms", type=float, default=1.0,
                   help="with --micro-batch: how long the first request waits for others (default: 1.0; 0 = only those arriving together)")
    p.add_argument("--max-micro-batch", type=int, default=256, help="with --micro-batch: flush at this many rows (default: 256)")
    p.add_argument("--cors-origins", default=None,
                   help="comma-separated origins browsers may call the service from (CORS; default: none, CORS off; * = any)")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs latency; see /metrics)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn log level")
    return p


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)  # connections queue from now on: none is refused while the model loads
    except OSError as exc:
        sock.close()
        raise DataError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def check_args(args: argparse.Namespace) -> None:
    """One line for the first flag out of its range."""
    for name in ("max_body_bytes", "max_batch", "threads", "max_micro_batch", "max_connections"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise DataError(f"--port: expected 0..65535, got {args.port}")
    if not (args.batch_window_ms >= 0 and math.isfinite(args.batch_window_ms)):
        raise DataError(f"--batch-window-ms: expected a number >= 0, got {args.batch_window_ms}")
    if not (args.body_timeout_s > 0 and math.isfinite(args.body_timeout_s)):
        raise DataError(f"--body-timeout-s: expected a number of seconds > 0, got {args.body_timeout_s}")


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    """Entry for ``astroscale-fl serve`` and ``python -m astroscale_fl.serve``."""
    args = parser().parse_args(argv)
    check_args(args)
    model_dir = resolve_model_dir(args.model)
    sock = _listen(args.host, args.port)  # before the slow imports: a taken port fails at once
    try:
        return _serve(args, model_dir, sock)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, model_dir: Path, sock: socket.socket) -> int:
    import torch
    import uvicorn

    from astroscale_fl.export.predict import Predictor
    from astroscale_fl.serve.app import create_app
    from astroscale_fl.serve.header_guard import header_guard_protocol

    torch.set_num_threads(args.threads)
    try:
        predictor = Predictor(model_dir)
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # a loader gap: still one line
        raise DataError(f"{model_dir}: cannot load the model ({one_line(str(exc))[:200] or type(exc).__name__})") from None
    origins = [o.strip() for o in (args.cors_origins or "").split(",") if o.strip()]
    app = create_app(predictor, args.max_body_bytes, args.max_batch, micro_batch=args.micro_batch,
                     batch_window_ms=args.batch_window_ms, max_micro_batch=args.max_micro_batch, cors_origins=origins,
                     body_timeout_s=args.body_timeout_s)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {predictor.card.get('task')} model {model_dir} on http://{shown}:{port} "
          f"(POST /predict, POST /predict/batch, GET /healthz, GET /metrics)", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log, server_header=False,
                            lifespan="off", timeout_graceful_shutdown=5, limit_concurrency=args.max_connections, backlog=BACKLOG,
                            http=header_guard_protocol(args.body_timeout_s))
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
