"""`lossprobe serve SITE`: serve a report site as plain static files on localhost."""

from __future__ import annotations

import functools
import http.server
import os
import stat
import sys
import threading
import urllib.parse
from pathlib import Path

from lossprobe.errors import UserError
from lossprobe.report.site import SITE_CSP


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Regular files inside the site only, opened through a descriptor of the site folder taken
    once when the server starts: replacing the folder (or a subfolder) by a symbolic link while
    serving exposes nothing, and a symbolic link, a name starting with '.' (the lock, the
    manifest), '..', a NUL byte, a folder without index.html, or anything that is not a regular
    file is 404. No directory listings; every response carries the site's
    Content-Security-Policy."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".svg": "image/svg+xml", ".md": "text/plain; charset=utf-8",
                      ".json": "application/json", ".npz": "application/octet-stream"}

    def _root(self) -> int:
        """The descriptor of the site root (the server's, opened once)."""
        fd = getattr(self.server, "site_root_fd", None)
        if fd is None:
            with _ROOT_LOCK:
                fd = getattr(self.server, "site_root_fd", None)
                if fd is None:
                    fd = self.server.site_root_fd = open_root(self.directory)
        return fd

    def _parts(self) -> list[str] | None:
        """The request path's components, or None for one that is never served."""
        raw = self.path.split("?", 1)[0].split("#", 1)[0]
        try:
            path = urllib.parse.unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
        parts = [p for p in path.split("/") if p]
        if any(p.startswith(".") or "\0" in p or "\\" in p for p in parts):
            return None
        return parts

    def _open(self, parts: list[str]) -> tuple[int, os.stat_result] | None:
        """(descriptor, stat) of the regular file `parts` under the root, never following a link."""
        fd = os.dup(self._root())
        try:
            for name in parts[:-1]:
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
            if parts:
                nxt = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
                os.close(fd)
                fd = nxt
            st = os.fstat(fd)
        except (OSError, ValueError):
            os.close(fd)
            return None
        return fd, st

    def send_head(self):
        parts = self._parts()
        got = self._open(parts) if parts is not None else None
        if got is not None and stat.S_ISDIR(got[1].st_mode):
            os.close(got[0])
            page = self._open([*parts, "index.html"])
            if page is None or not stat.S_ISREG(page[1].st_mode):
                if page is not None:
                    os.close(page[0])
                got = None
            elif not self.path.split("?", 1)[0].split("#", 1)[0].endswith("/"):
                os.close(page[0])  # a folder without the trailing slash: redirect, as the base class does
                self.send_response(301)
                self.send_header("Location", self.path.split("?", 1)[0] + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            else:
                got, parts = page, [*parts, "index.html"]
        if got is None or not stat.S_ISREG(got[1].st_mode):
            if got is not None:
                os.close(got[0])
            self.send_error(404, "File not found")
            return None
        fd, st = got
        f = os.fdopen(fd, "rb")
        os.set_blocking(fd, True)
        try:
            self.send_response(200)
            self.send_header("Content-type", self.guess_type(parts[-1]))
            self.send_header("Content-Length", str(st.st_size))
            self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
            self.end_headers()
        except BaseException:
            f.close()
            raise
        return f

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


_ROOT_LOCK = threading.Lock()


def open_root(site: str | os.PathLike) -> int:
    """A descriptor of the site folder, resolved once (what the server serves from)."""
    return os.open(os.path.realpath(site), os.O_RDONLY | os.O_DIRECTORY)


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
    server.site_root_fd = open_root(site)
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
        os.close(server.site_root_fd)
    return 0
