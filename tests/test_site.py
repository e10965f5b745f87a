"""The report site without a browser: escaping, Markdown, index, run pages, comparisons, links."""

from __future__ import annotations

import html.parser
import json
import os
import posixpath
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from lossprobe.errors import UserError
from lossprobe.report import site
from site_runs import EVIL_NAME, EVIL_NOTE, make_runs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    runs = make_runs(root / "runs")
    index = site.build_site([root / "runs"], root / "site")
    return runs, index.parent


class Page(html.parser.HTMLParser):
    """Collects what the tests look at: links, images, headings, tables, scripts, text."""

    def __init__(self):
        super().__init__()
        self.links, self.images, self.headings, self.scripts, self.text = [], [], [], [], []
        self.tables = self.tables_with_th = 0
        self._in_table_th = False
        self._script = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "link" and "href" in a:
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a)
        if tag == "script":
            self._script = a
            self.scripts.append(a)
            if "src" in a:
                self.links.append(a["src"])
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.headings.append(int(tag[1]))
        if tag == "table":
            self.tables += 1
            self._in_table_th = False
        if tag == "th" and not self._in_table_th:
            self._in_table_th = True
            self.tables_with_th += 1

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is None:
            self.text.append(data)


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def local_target(page: Path, url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme or url.startswith("#") or url.startswith("data:"):
        return None
    return (page.parent / unquote(parts.path)).resolve()


# --- pure functions ---------------------------------------------------------------------------
def test_markdown_escapes_html_and_drops_unsafe_links():
    md = ("# Title <script>alert(1)</script>\n\nText with <b>tags</b> & **bold** *it* `a<b`\n\n"
          "[js](javascript:alert(1)) [ok](https://example.org/a?b=1&c=2) [data](data:text/html,hi) "
          "![img](figures/x.png) [up](../secret.txt)\n\n| a | <i>b</i> |\n|---|---|\n| 1 | 2 |\n\n- one\n- two\n")
    out = site.markdown_to_html(md, resolve=lambda u: "files/" + u if u == "figures/x.png" else None)
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "<b>" not in out and "&lt;b&gt;tags&lt;/b&gt;" in out
    assert "<strong>bold</strong>" in out and "<em>it</em>" in out and "<code>a&lt;b</code>" in out
    assert "javascript:" not in out and "data:" not in out and "../secret" not in out
    assert '<a href="https://example.org/a?b=1&amp;c=2" rel="noopener noreferrer">ok</a>' in out
    assert '<img src="files/figures/x.png" alt="img"' in out
    assert '<th scope="col">&lt;i&gt;b&lt;/i&gt;</th>' in out and "<td>1</td>" in out
    assert "<ul><li>one</li><li>two</li></ul>" in out.replace("\n", "")
    assert out.startswith("<h3>")  # '#' shifted below the page's h1 and h2


def test_markdown_headings_never_skip_levels():
    out = site.markdown_to_html("#### deep first\n\n# top\n\n### skipped two\n", top_level=3)
    assert [int(t[2]) for t in out.split("\n")] == [3, 3, 4]


def test_json_for_script_cannot_close_the_element():
    s = site.json_for_script({"name": "</script><script>alert(1)</script>", "v": [1.5]})
    assert "<" not in s and ">" not in s
    assert json.loads(s)["name"] == "</script><script>alert(1)</script>"


def test_key_numbers_prefer_headline_values():
    summary = {"study": "x", "seconds": 12.0, "seeds": [0, 1], "n_train": 4000, "verdict": "text",
               "loss": {"train": 0.5}, "loss_barrier": {"train": 0.75, "test": 0.7},
               "test_accuracy": [0.9, 0.8], "alphas": list(range(41))}
    keys = dict(site.key_numbers(summary))
    assert list(keys)[:2] == ["loss_barrier", "test_accuracy"]
    assert keys["loss_barrier"] == "train 0.75 · test 0.7" and keys["test_accuracy"] == "0.9 / 0.8"
    assert not {"seconds", "seeds", "n_train", "study", "alphas", "verdict"} & set(keys)


def test_declared_lines_and_surfaces_are_drawn_and_nothing_else():
    from lossprobe.results.plotspec import Series, line, surface

    a = {"alphas": np.linspace(0, 1, 5), "loss_train": np.ones(5), "loss_test": np.zeros(5),
         "accuracy_train": np.ones(5), "other": np.ones(3)}
    specs = [line("Loss", "alphas", [Series("loss_train", "train"), Series("loss_test", "test")]),
             line("Accuracy", "alphas", ["accuracy_train"])]
    plots = site.declared_plots("a.npz", specs, a)
    assert [sorted(t["name"] for t in p.data) for p in plots] == [["test", "train"], ["accuracy_train"]]
    s = {"x": np.linspace(-1, 1, 4), "y": np.linspace(-1, 1, 3), "loss": np.arange(12.0).reshape(3, 4)}
    spec = surface("loss", "loss", rows="y", cols="x")
    plots = site.surface_plots("s.npz", spec, s)
    assert [p.surface for p in plots] == [True, False]
    t = plots[0].data[0]
    assert t["type"] == "surface" and len(t["x"]) == 4 and len(t["y"]) == 3 and len(t["z"]) == 3
    s["loss"][0, 0] = np.nan  # gaps become null, never NaN in JSON
    assert site.surface_plots("s.npz", spec, s)[0].data[0]["z"][0][0] is None
    # nothing declared: nothing drawn, whatever the arrays are called
    assert site.declared_plots("t.npz", [], {**a, **s}) == []


# --- the built site ------------------------------------------------------------------------------
def test_site_layout_and_assets(built):
    _, out = built
    assert (out / "index.html").is_file() and (out / site.SITE_MARKER).is_file()
    assert (out / "assets" / "plotly.min.js").stat().st_size > 1_000_000  # bundled, not a CDN link
    assert {p.name for p in (out / "runs").iterdir()} == {"pair-a", "pair-b", "surface", "evil"}
    assert [p.name for p in (out / "compare").iterdir()] == ["spiral-pair.html"]  # surface has one run only
    # raw files copied, checkpoints not
    assert (out / "runs/pair-a/files/interpolation.npz").is_file()
    assert (out / "runs/pair-a/files/figures/interpolation.svg").is_file()
    assert not (out / "runs/pair-a/files/checkpoints").exists()


def test_every_page_is_accessible_and_every_link_resolves(built):
    _, out = built
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == 6
    for page in pages:
        p = parse(page)
        assert p.headings and p.headings[0] == 1 and p.headings.count(1) == 1, page
        assert all(b - a <= 1 for a, b in zip(p.headings, p.headings[1:])), (page, p.headings)
        assert p.tables == p.tables_with_th, page
        for img in p.images:
            assert img.get("alt"), (page, img)
            assert local_target(page, img["src"]).is_file(), (page, img["src"])
        for url in p.links:
            target = local_target(page, url)
            if target is not None:
                assert target.exists(), (page, url)
                assert out.resolve() in target.parents, (page, url)  # never leaves the site
            else:
                assert url.startswith(("#", "data:", "https://", "http://")), (page, url)
        # nothing is loaded from outside the site
        for s in p.scripts:
            assert "src" not in s or not urlsplit(s["src"]).scheme, (page, s)


def test_index_lists_runs_with_kind_status_and_key_numbers(built):
    _, out = built
    text = " ".join(parse(out / "index.html").text)
    for name in ("pair-a", "pair-b", "surface", EVIL_NAME):
        assert name in text
    assert text.count("complete") >= 3 and "incomplete" in text
    assert "spiral-pair" in text and "loss_barrier" in text
    assert "Compare the 3 spiral-pair runs" in text


def test_run_page_has_summary_plots_report_figures_config_files(built):
    runs, out = built
    page = out / "runs/pair-a/index.html"
    src = page.read_text()
    p = parse(page)
    text = " ".join(p.text)
    summary = json.loads((runs["a"] / "summary.json").read_text())
    assert f"{summary['loss_barrier']['test']:.4g}" in text
    for section in ("Summary", "Interactive plots", "Report", "Configuration", "Files", "Environment"):
        assert section in text
    # plots: loss and accuracy along alpha, learning curves (loss and accuracy)
    specs = [json.loads(s) for s in _plot_specs(src)]
    titles = [s["layout"]["title"]["text"] for s in specs]
    assert any(t.startswith("Loss along the path α") for t in titles)
    assert sum("Learning curves" in t for t in titles) == 2
    loss = next(s for s in specs if s["layout"]["title"]["text"].startswith("Loss along"))
    assert sorted(t["name"] for t in loss["data"]) == ["test", "train"] and len(loss["data"][0]["x"]) == 9
    # both figures are shown inside the rendered report with its captions as alt text
    alts = {i["alt"] for i in p.images}
    assert "Learning curves of both seeds on the spirals" in alts
    assert "Loss and accuracy along the line between the two networks" in alts
    assert 'href="files/interpolation.npz"' in src and "alphas 9 float64" in text
    assert "checkpoints/" in text and "not copied" in text


def _plot_specs(src: str) -> list[str]:
    import re

    return re.findall(r'<script type="application/json" id="plot-\d+-data">(.*?)</script>', src)


def test_surface_page_has_3d_surface_and_contour(built):
    _, out = built
    specs = [json.loads(s) for s in _plot_specs((out / "runs/surface/index.html").read_text())]
    types = [s["data"][0]["type"] for s in specs]
    assert types == ["surface", "contour"]
    surf = specs[0]["data"][0]
    assert len(surf["z"]) == 7 and len(surf["z"][0]) == 9 and len(surf["x"]) == 9  # rows y, columns x
    assert specs[0]["layout"]["scene"]["xaxis"]["title"]["text"] == "x"


def test_script_name_and_note_are_text(built):
    _, out = built
    for page in (out / "index.html", out / "runs/evil/index.html", out / "compare/spiral-pair.html"):
        src = page.read_text()
        assert "<script>window" not in src and "<img src=x" not in src and "<iframe" not in src, page
        assert "javascript:" not in src, page
        text = " ".join(parse(page).text)
        assert EVIL_NAME in text, page
    text = " ".join(parse(out / "runs/evil/index.html").text)
    assert EVIL_NOTE in text and "<b>not bold</b>" in text and "</td></tr><script>x</script>" in text
    assert "incomplete" in text and "stages done: train" in text


def test_comparison_page(built):
    runs, out = built
    src = (out / "compare/spiral-pair.html").read_text()
    text = " ".join(parse(out / "compare/spiral-pair.html").text)
    a = json.loads((runs["a"] / "summary.json").read_text())
    b = json.loads((runs["b"] / "summary.json").read_text())
    assert f"{a['loss_barrier']['test']:.4g}" in text and f"{b['loss_barrier']['test']:.4g}" in text
    assert "Configuration differences" in text and "seeds" in text
    specs = [json.loads(s) for s in _plot_specs(src)]
    loss = next(s for s in specs if s["layout"]["title"]["text"].startswith("Loss along"))
    names = [t["name"] for t in loss["data"]]
    assert "pair-a · train" in names and "pair-b · test" in names and len(names) == 4
    assert "Figures side by side" in text


def test_rebuild_in_place_and_refuse_foreign_folder(built, tmp_path):
    runs, out = built
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a lossprobe site"):
        site.build_site([runs["a"]], tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    other = tmp_path / "again"
    site.build_site([runs["a"], runs["b"]], other)
    site.build_site([runs["a"]], other)  # a site built before is rebuilt
    assert sorted(p.name for p in (other / "runs").iterdir()) == ["pair-a"] and not (other / "compare").exists()
    with pytest.raises(UserError, match="no config.json"):
        site.build_site([runs["a"] / "figures"], tmp_path / "x")
    with pytest.raises(UserError, match="does not exist"):
        site.build_site([tmp_path / "missing"], tmp_path / "y")


def test_cli_report_and_serve(built, tmp_path, capsys):
    from lossprobe.cli import main
    from lossprobe.cli.serve import make_server

    runs, _ = built
    out = tmp_path / "s"
    assert main(["report", str(runs["a"]), str(runs["surface"]), "--out", str(out)]) == 0
    assert "2 run(s)" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "nope")]) == 2
    server = make_server(out, "127.0.0.1", 0, quiet=True)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs/surface/index.html", timeout=10) as r:
            assert r.status == 200 and b"3-D surface" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/assets/site.js", timeout=10) as r:
            assert "javascript" in r.headers["Content-Type"]
    finally:
        server.shutdown()
        server.server_close()


def _get(url):
    """(status, headers, body) of a GET, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_serve_only_regular_files_inside_the_site(built, tmp_path):
    from lossprobe.cli.serve import make_server

    runs, _ = built
    out = tmp_path / "s"
    site.build_site([runs["a"]], out)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    (out / "leak.txt").symlink_to(secret)
    (out / "runs" / "etc").symlink_to("/etc")
    (out / "empty").mkdir()
    os.mkfifo(out / "pipe")
    server = make_server(out, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        status, headers, body = _get(base + "index.html")
        assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
        assert _get(base)[0] == 200  # the folder's index.html
        for path in ("leak.txt", "runs/etc/passwd", "runs/etc/", "empty/", "runs/", "assets/", "runs/pair-a/files/",
                     "pipe", "../secret.txt", "%2e%2e/secret.txt", "runs/pair-a/../../../secret.txt", "nope.html"):
            status, _h, body = _get(base + path)
            assert status == 404, (path, status)
            assert b"not for the web" not in body and b"root:" not in body and b"Directory listing" not in body
    finally:
        server.shutdown()
        server.server_close()


def test_pages_carry_a_csp_and_report_md_loads_nothing_remote(built):
    runs, out = built
    for page in out.rglob("*.html"):
        text = page.read_text()
        assert f'http-equiv="Content-Security-Policy" content="{site.esc(site.SITE_CSP)}"' in text, page
    evil = (out / "runs" / "evil" / "index.html").read_text()
    assert "remote image not shown: tracker" in evil and "example.com/pixel.png" not in evil
    assert "javascript:" not in evil and "data:text" not in evil
    md = site.markdown_to_html("![a](https://x.org/a.png) ![b](//x.org/b.png) ![c](data:image/png;base64,AAAA) "
                               "[d](data:text/html,hi) [e](JavaScript:alert(1)) [f](&#106;avascript:alert(1)) "
                               "<javascript:alert(1)> [g][r]\n\n[r]: javascript:alert(2)\n")
    assert "<img" not in md and "href" not in md, md


def test_build_run_site_never_raises(tmp_path, capsys):
    assert site.build_run_site(tmp_path / "missing") is None
    assert "could not build the report site" in capsys.readouterr().err


def test_symlinks_and_paths_outside_are_not_copied(built, tmp_path):
    runs, _ = built
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["surface"], run)
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (run / "link.txt").symlink_to(secret)
    out = tmp_path / "site"
    site.build_site([run], out)
    assert not (out / "runs/run/files/link.txt").exists()
    assert "private" not in "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file()
                                    and p.suffix in (".html", ".json", ".md"))


def test_posix_rel_paths_are_quoted():
    assert site.href("runs/a b/index.html") == "runs/a%20b/index.html"
    assert posixpath.normpath("figures/../x.png") == "x.png"


def test_generic_arrays_of_other_studies():
    from lossprobe.results import store
    from lossprobe.results.plotspec import Series, line

    rng = np.random.default_rng(0)
    # lossprobe.landscape.surfaces.Surface.save: coords_0, coords_1, loss, accuracy, mask, with a grid declaration
    surf = {"coords_0": np.linspace(-1, 1, 5), "coords_1": np.linspace(-1, 1, 6), "loss": rng.random((5, 6)),
            "accuracy": rng.random((5, 6)), "mask": np.ones((5, 6), bool)}
    surf[store.GRIDS_KEY] = np.array(json.dumps({"loss": {"rows": "coords_0", "cols": "coords_1"}}))
    plots = site.declared_plots("surface.npz", store.plots_of(surf), surf)
    assert [p.data[0]["type"] for p in plots] == ["surface", "contour"]
    assert len(plots[0].data[0]["x"]) == 6 and len(plots[0].data[0]["y"]) == 5
    # one line per declared series; 2-D arrays without a declaration are not drawn
    w = {"widths": np.array([8.0, 16, 32]), "naive": rng.random(3), "aligned": rng.random(3),
         "per_pair": rng.random((3, 4))}
    spec = line("Loss barrier against width", "widths", [Series("naive", "naive"), Series("aligned", "aligned")],
                xlabel="hidden width", ylabel="loss barrier", log_x=True)
    plots = site.declared_plots("width.npz", [spec], w)
    assert len(plots) == 1 and [t["name"] for t in plots[0].data] == ["naive", "aligned"]
    assert plots[0].layout["xaxis"]["type"] == "log" and plots[0].layout["xaxis"]["title"]["text"] == "hidden width"
    assert np.allclose(plots[0].data[0]["y"], w["naive"])
    json.dumps([p.data for p in plots], allow_nan=False)


def test_surface_axis_titles_from_the_saved_metadata(tmp_path):
    from lossprobe.results.store import RunDir, write_json

    rd = RunDir(tmp_path / "s", "surface", {"steps": 3})
    # as Surface.save writes it without axis_labels: the grid declared, its titles in surface.json
    rd.save_arrays("surface.npz", grids={"loss": {"rows": "coords_0", "cols": "coords_1"}},
                   coords_0=np.linspace(-1, 1, 3), coords_1=np.linspace(-1, 1, 4),
                   loss=np.ones((3, 4)), accuracy=np.ones((3, 4)), mask=np.ones((3, 4), bool))
    write_json(rd / "surface.json", {"meta": {"directions": [{"kind": "random", "norm": "filter"},
                                                             {"kind": "pca", "norm": "none"}]}})
    run = site.load_run(rd.path)
    (spec,) = run.plots["surface.npz"]
    assert (spec.ylabel, spec.xlabel) == ("direction 1 (random, filter-normalised)", "direction 2 (pca)")
    surf = site.run_plots(run)[0][0]
    assert surf.layout["scene"]["yaxis"]["title"]["text"] == "direction 1 (random, filter-normalised)"


def test_same_curve_in_several_files_is_one_plot_and_surfaces_are_capped(tmp_path):
    from lossprobe.results.plotspec import Series, line, surface
    from lossprobe.results.store import RunDir

    rd = RunDir(tmp_path / "o", "optimizers", {"quick": True})
    curve = line("Training loss", "steps", [Series("loss", "loss")], xlabel="step", ylabel="loss")
    plane = surface("Loss over the plane", "loss", rows="y", cols="x")
    for k, opt in enumerate(("sgd", "adam")):
        rd.save_arrays(f"train-{opt}.npz", plots=[curve], steps=np.arange(5), loss=np.linspace(1, k / 4, 5))
    for i in range(site.MAX_SURFACE_FILES + 2):
        rd.save_arrays(f"plane-{i}.npz", plots=[plane], x=np.linspace(0, 1, 3), y=np.linspace(0, 1, 4),
                       loss=np.full((4, 3), i))
    plots, omitted = site.run_plots(site.load_run(rd.path))
    curves = [p for p in plots if not p.surface and p.data[0]["type"] == "scatter"]
    assert len(curves) == 1 and sorted(t["name"] for t in curves[0].data) == ["train-adam · loss", "train-sgd · loss"]
    assert sum(p.surface for p in plots) == site.MAX_SURFACE_FILES and omitted == 4
    site.build_site([rd.path], tmp_path / "site")
    assert "4 more plot(s)" in (tmp_path / "site/runs/o/index.html").read_text()


def test_key_numbers_of_other_summary_shapes():
    s = {"optimizers": {"sgd": {"lr": 0.1, "test_accuracy": 0.6}, "adam": {"lr": 1e-3, "test_accuracy": 0.7}},
         "per_method": {"naive": [0.1, 0.2], "aligned": [0.05, 0.1]}, "params": 65, "threshold": 0.2,
         "odd": {"a": None, "b": "x", "c": {"d": [1, [2]]}}, "empty": {}, "nested": [[1, 2], [3]], "none": None}
    keys = dict(site.key_numbers(s, limit=10))
    assert keys["optimizers.test_accuracy"] == "sgd 0.6 · adam 0.7"
    assert keys["per_method"] == "naive 0.1 / 0.2 · aligned 0.05 / 0.1"
    assert list(keys)[-1] == "params" and "threshold" not in keys
    for odd in ([], "text", {1: 2}, {"x": {"y": {}}}, {"a": {"b": {"c": 1}, "d": 2}}):
        site.key_numbers(odd)
