"""`python xfed.py -c serve [--port P] [--host H]`: a read-only status page of the federation.

A standard-library HTTP server (no extra service beyond Redis) answering GET only: `/` the page,
`/app.js` its script, `/api/state[?job=N]` the JSON it polls (xfed.web.state). Binds 127.0.0.1 by
default: the page shows hosts and pids of the federation, so exposing it is the operator's choice.
The Redis address and password stay in this process; the page never sees them.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click

from xfed.commands import HELP, run
from xfed.errors import BrokerError, XfedError

from .page import HTML, JS
from .state import Snapshots

log = logging.getLogger(__name__)
DEFAULT_PORT = 8765
_JOB_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
                               "style-src 'unsafe-inline'; img-src 'self'",
}


def make_handler(snapshots: Snapshots) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "xfed-status"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            if url.path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", HTML.encode())
            elif url.path == "/app.js":
                self._send(200, "text/javascript; charset=utf-8", JS.encode())
            elif url.path == "/api/state":
                job = (parse_qs(url.query).get("job") or [None])[0]
                if job is not None and not _JOB_RE.match(job):
                    self._send(400, "application/json", b'{"error": "bad job id"}')
                    return
                try:
                    body = json.dumps(snapshots.snapshot(job), default=str).encode()
                except (BrokerError, OSError) as exc:
                    self._send(503, "application/json", json.dumps({"error": str(exc)[:200]}).encode())
                    return
                self._send(200, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in _HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:  # polled every second: keep the terminal quiet
            log.debug("%s " + fmt, self.address_string(), *args)

    return Handler


def make_server(config_path: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    from xfed.broker.connection import connect
    from xfed.broker.keys import Keys
    from xfed.config import load_fed_conf

    fed = load_fed_conf(config_path)
    r = connect(fed, retry_s=5.0, client_name="xfed-serve")
    snapshots = Snapshots(r, Keys(fed.redis.namespace), list(fed.node_ids))
    try:
        server = ThreadingHTTPServer((host, port), make_handler(snapshots))
    except OSError as exc:
        raise XfedError(f"serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    return server


def serve_command(config_path: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> int:
    server = make_server(config_path, host, port)
    bound_host, bound_port = server.server_address[:2]
    print(f"xfed status page: http://{bound_host}:{bound_port}/ (read-only; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


@click.command(context_settings=HELP, help="A read-only status page of the federation (what `xfed -c serve` runs).")
@click.argument("config_path", default="./config")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (keep it local unless you mean it).")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="The page's TCP port.")
def command(config_path: str, host: str, port: int) -> int:
    return serve_command(config_path, host, port)


if __name__ == "__main__":
    sys.exit(run(command, None, "python -m xfed.web.server"))
