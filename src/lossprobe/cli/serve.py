"""`lossprobe serve SITE`: serve a report site as plain static files on localhost."""

from __future__ import annotations

import functools
import http.server
import sys
from pathlib import Path

from ..errors import UserError


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files only (no directory listing surprises beyond the site, no scripts run)."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".svg": "image/svg+xml", ".md": "text/plain; charset=utf-8",
                      ".json": "application/json", ".npz": "application/octet-stream"}

    def log_message(self, format, *args):  # noqa: A002 - the signature of the base class
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)


def make_server(site: str | Path, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False):
    """A ThreadingHTTPServer serving folder `site` (port 0 picks a free port)."""
    site = Path(site)
    if not site.is_dir():
        raise UserError(f"{site} is not a folder; build a site first with 'lossprobe report RUN_DIR --out {site}'")
    if not (site / "index.html").is_file():
        raise UserError(f"{site} has no index.html; build it with 'lossprobe report RUN_DIR --out {site}'")
    handler = functools.partial(QuietHandler, directory=str(site.resolve()))
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None
    server.quiet = quiet
    server.daemon_threads = True
    return server


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a report site on localhost (plain static files)",
        description="Serve the static site written by 'lossprobe report' over HTTP, for browsers or "
        "colleagues on the same machine. Only files are served; nothing is executed. Stop with Ctrl-C. "
        "(The site also opens directly from disk: SITE/index.html.)",
    )
    p.add_argument("site", metavar="SITE", help="the folder written by 'lossprobe report --out SITE'")
    p.add_argument("--port", type=int, default=8000,
                   help="TCP port (default: %(default)s; 0 picks a free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s, this machine only; 0.0.0.0 exposes the "
                   "site to the network)")
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    p.set_defaults(func=run)


def run(args) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    server = make_server(args.site, args.host, args.port, args.quiet)
    host, port = server.server_address[:2]
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"lossprobe: warning: serving on {host}, reachable from other machines", file=sys.stderr)
    print(f"serving {args.site} at http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0
