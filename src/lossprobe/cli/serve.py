"""`lossprobe serve SITE`: serve a report site as plain static files on localhost."""

from __future__ import annotations

import functools
import http.server
import os
import sys
from pathlib import Path

from lossprobe.errors import UserError
from lossprobe.report.site import SITE_CSP


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Regular files inside the site only: a path that leaves the site root (through '..' or a
    symbolic link), a folder without index.html, or anything that is not a regular file is
    404. No directory listings; every response carries the site's Content-Security-Policy."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".svg": "image/svg+xml", ".md": "text/plain; charset=utf-8",
                      ".json": "application/json", ".npz": "application/octet-stream"}

    def _inside(self, path: str) -> str | None:
        """The real path of `path` if it is a regular file inside the site root, else None."""
        root = os.path.realpath(self.directory)
        real = os.path.realpath(path)
        if real != root and not real.startswith(root + os.sep):
            return None
        return real if os.path.isfile(real) else None

    def send_head(self):
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            if not self.path.split("?", 1)[0].split("#", 1)[0].endswith("/"):
                # a folder without the trailing slash: redirect like the base class, if it has a page
                if self._inside(os.path.join(path, "index.html")) is None:
                    self.send_error(404, "File not found")
                    return None
                return super().send_head()
            path = os.path.join(path, "index.html")
        if self._inside(path) is None:
            self.send_error(404, "File not found")
            return None
        return super().send_head()

    def list_directory(self, path):  # never list a folder
        self.send_error(404, "File not found")
        return None

    def end_headers(self):
        self.send_header("Content-Security-Policy", SITE_CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

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
