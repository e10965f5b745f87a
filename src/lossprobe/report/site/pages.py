"""The three kinds of page: a run, the index of all runs, and a comparison of runs of one kind."""

from __future__ import annotations

import json
import posixpath
from urllib.parse import quote

import numpy as np

from lossprobe.report.site.content import flatten, key_numbers
from lossprobe.report.site.load import Run
from lossprobe.report.site.markdown import figure_captions, markdown_to_html
from lossprobe.report.site.markup import badge, date, esc, fmt, href, kv_table, page, plot_html, size
from lossprobe.report.site.plots import compare_plots, drawn_arrays, run_plots


def _badge(run: Run) -> str:
    return badge(run.state, ((run.status or {}).get("done") or []) if run.status else None)


def _figure_html(run: Run, rel: str, caption: str, prefix: str) -> str:
    alt = caption or _fig_name(rel)
    svg = rel.rsplit(".", 1)[0] + ".svg"
    extra = f' · <a href="{href(prefix + svg)}">SVG</a>' if svg != rel and svg in run.copied else ""
    return (f'<figure><a href="{href(prefix + rel)}"><img src="{href(prefix + rel)}" alt="{esc(alt)}" loading="lazy">'
            f'</a><figcaption>{esc(caption or _fig_name(rel))} <span class="muted">({esc(rel)}{extra})</span>'
            f"</figcaption></figure>")


def _fig_name(rel: str) -> str:
    stem = posixpath.basename(rel).rsplit(".", 1)[0]
    return "Figure: " + stem.replace("_", " ").replace("-", " ")


def _captions(run: Run) -> dict[str, str]:
    caps = figure_captions(run.report_md)
    out = {}
    for path, cap in caps.items():
        out[path] = cap
        stem = path.rsplit(".", 1)[0]
        for ext in (".png", ".svg", ".jpg", ".jpeg"):
            out.setdefault(stem + ext, cap)
    return out


def _value_cell(v, note: str) -> str:
    return f'<span class="muted">{esc(note)}</span>' if note else esc(fmt(v))


def _array_note(arrays: dict[str, np.ndarray] | None, specs: list) -> str:
    """The arrays of an .npz with their shapes, and which of them no plot declaration draws."""
    if arrays is None:
        return ""
    parts = [f"{k} {'×'.join(map(str, a.shape)) or 'scalar'} {a.dtype}" for k, a in list(arrays.items())[:20]]
    more = f" and {len(arrays) - 20} more" if len(arrays) > 20 else ""
    undrawn = [k for k in arrays if k not in drawn_arrays(specs)]
    if not undrawn:
        return "arrays: " + "; ".join(parts) + more
    which = "none declared to be drawn" if len(undrawn) == len(arrays) else \
        "not drawn (no plot declares them): " + ", ".join(undrawn[:20]) + ("..." if len(undrawn) > 20 else "")
    return "arrays: " + "; ".join(parts) + more + f" — {which}"


def render_run(run: Run, compare_href: str | None) -> str:
    root = "../../"
    prefix = "files/"
    caps = _captions(run)
    b: list[str] = []
    when = date(run.started)
    b.append(f"<h1>{esc(run.name)}</h1>")
    sub = [f"<strong>{esc(run.kind)}</strong>", _badge(run)]
    if when:
        sub.append(f"started {esc(when)}")
    if run.finished:
        sub.append(f"finished {esc(date(run.finished))}")
    if run.environment.get("resumed_from"):
        sub.append(f"resumed (first started {esc(date(run.environment['resumed_from']))})")
    b.append('<p class="subtitle">' + " · ".join(sub) + f' · directory <code>{esc(run.path.name)}</code></p>')
    if run.note:
        b.append(f'<p class="note">{esc(run.note)}</p>')
    for problem in run.problems:
        b.append(f'<p class="note">Problem: {esc(problem)}</p>')
    if run.state == "incomplete":
        done = ", ".join(map(str, (run.status or {}).get("done") or [])) or "none"
        b.append(f'<p class="note">This run is not complete (stages done: {esc(done)}); '
                 "rerun its command to resume it. The page shows what exists so far.</p>")

    summary = run.summary if isinstance(run.summary, dict) else {}
    verdict = summary.get("verdict")
    keys = key_numbers(summary)
    b.append('<h2 id="summary">Summary</h2>')
    if isinstance(verdict, str) and verdict:
        b.append(f'<p class="verdict"><strong>Verdict:</strong> {esc(verdict)}</p>')
    if keys:
        b.append('<ul class="cards" aria-label="Key numbers">' + "".join(
            f'<li><span class="k">{esc(k)}</span><span class="v">{esc(v)}</span></li>' for k, v in keys) + "</ul>")
    if summary:
        rows = [(k, _value_cell(v, note)) for k, v, note in flatten(summary) if k != "verdict"]
        b.append(f"<details{'' if keys else ' open'}><summary>All {len(rows)} values in summary.json</summary>"
                 + kv_table(rows, "summary.json (long arrays are in the linked files)", raw_values=True)
                 + "</details>")
    elif run.summary is not None:
        b.append(f"<pre><code>{esc(json.dumps(run.summary, indent=1)[:5000])}</code></pre>")
    else:
        b.append("<p>No summary.json yet.</p>")

    plots, omitted = run_plots(run)
    if plots:
        b.append('<h2 id="plots">Interactive plots</h2>')
        b.append("<p>Drag to zoom (2-D) or rotate (3-D), double-click to reset; hover for values. "
                 "The buttons do the same from the keyboard.</p>")
        b += [plot_html(p, f"plot-{i + 1}") for i, p in enumerate(plots)]
        if omitted:
            b.append(f"<p>{omitted} more plot(s) of the run's arrays are left out to keep this page quick; "
                     'the arrays are under <a href="#files">Files</a>.</p>')

    shown: set[str] = set()
    if run.report_md.strip():
        def resolve(url: str) -> str | None:
            rel = posixpath.normpath(url.split("#")[0])
            if rel.startswith(("../", "/")) or rel == "..":
                return None
            if rel in run.copied:
                shown.add(rel)
                return quote(prefix + rel, safe="/")
            return None

        b.append('<h2 id="report">Report</h2>')
        b.append('<div class="report">' + markdown_to_html(run.report_md, resolve, top_level=3) + "</div>")
    figs = [f for f in run.figures() if f not in shown]
    if figs:
        b.append('<h2 id="figures">Figures</h2>' if not shown else '<h2 id="figures">More figures</h2>')
        b += [_figure_html(run, f, caps.get(f, ""), prefix) for f in figs]

    b.append('<h2 id="config">Configuration</h2>')
    rows = [(k, _value_cell(v, note)) for k, v, note in flatten(run.config, max_list=64)]
    b.append(kv_table(rows, "config.json: everything needed to rerun this run", raw_values=True))

    b.append('<h2 id="files">Files</h2>')
    frows = []
    per_dir: dict[str, list[tuple[str, int]]] = {}
    for rel, n in run.files:
        per_dir.setdefault(posixpath.dirname(rel), []).append((rel, n))
    crowded = {d for d, fs in per_dir.items() if d and len(fs) > 8}  # e.g. resumable chunks
    for rel, n in run.files:
        d = posixpath.dirname(rel)
        if d in crowded:
            continue
        what = _array_note(run.arrays.get(rel), run.plots.get(rel, [])) if rel.endswith(".npz") else ""
        frows.append(f'<tr><th scope="row"><a href="{href(prefix + rel)}">{esc(rel)}</a></th>'
                     f'<td class="num">{esc(size(n))}</td><td>{esc(what)}</td></tr>')
    for d in sorted(crowded):
        fs = per_dir[d]
        links = ", ".join(f'<a href="{href(prefix + rel)}">{esc(posixpath.basename(rel))}</a>' for rel, _ in fs)
        frows.append(f'<tr><th scope="row">{esc(d)}/</th><td class="num">{esc(size(sum(n for _, n in fs)))}</td>'
                     f"<td><details><summary>{len(fs)} files</summary>{links}</details></td></tr>")
    for rel, n, why in run.not_copied:
        frows.append(f'<tr><th scope="row">{esc(rel)}</th><td class="num">{esc(size(n))}</td>'
                     f"<td>not copied into the site: {esc(why)}</td></tr>")
    b.append('<div class="table-wrap"><table><caption>Raw files of the run (copies)</caption><thead><tr>'
             '<th scope="col">file</th><th scope="col">size</th><th scope="col">contents</th></tr></thead>'
             f'<tbody>{"".join(frows)}</tbody></table></div>')

    if run.environment:
        b.append('<h2 id="environment">Environment</h2>')
        env = dict(run.environment)
        cmd = env.pop("command", None)
        if isinstance(cmd, list):
            b.append("<p>Command:</p><pre><code>" + esc(" ".join(map(str, cmd))) + "</code></pre>")
        rows = [(k, _value_cell(v, note)) for k, v, note in flatten(env, max_list=16)]
        b.append(kv_table(rows, "environment.json: versions, seeds and machine", raw_values=True))

    nav = f' <a href="{href(compare_href)}">Compare {esc(run.kind)} runs</a>' if compare_href else ""
    return page(f"{run.name} — {run.kind} — lossprobe", "\n".join(b), root, nav=nav, plots=bool(plots))


def render_index(runs: list[Run], comparisons: dict[str, str]) -> str:
    b = ["<h1>lossprobe runs</h1>"]
    n_done = sum(r.state == "complete" for r in runs)
    b.append(f'<p class="subtitle">{len(runs)} run(s), {n_done} complete. Open a run for its summary, '
             "interactive plots, figures, configuration and raw files.</p>")
    b.append('<h2 id="runs">Runs</h2>')
    rows = []
    no_fig = '<span class="muted">no figures</span>'
    for r in runs:
        figs = r.figures()
        caps = _captions(r)
        thumb = ""
        if figs:
            f = next((x for x in figs if x.lower().endswith(".png")), figs[0])
            thumb = (f'<img class="thumb" src="{href(f"runs/{r.slug}/files/{f}")}" '
                     f'alt="{esc(caps.get(f) or _fig_name(f))}" loading="lazy">')
        keys = key_numbers(r.summary, limit=4)
        kn = ('<ul class="keynums">' + "".join(f"<li>{esc(k)}: <strong>{esc(v)}</strong></li>" for k, v in keys)
              + "</ul>") if keys else '<span class="muted">none yet</span>'
        rows.append(
            f'<tr><th scope="row"><a class="name" href="{href(f"runs/{r.slug}/index.html")}">{esc(r.name)}</a>'
            + (f'<br><span class="muted">{esc(r.note[:140])}</span>' if r.note else "")
            + f"</th><td>{esc(r.kind)}</td><td>{esc(date(r.started)) or '—'}</td><td>{_badge(r)}</td>"
            f"<td>{kn}</td><td>{thumb or no_fig}</td></tr>")
    b.append('<div class="table-wrap"><table class="runs"><caption>Every run in this site</caption><thead><tr>'
             '<th scope="col">run</th><th scope="col">study or command</th><th scope="col">started</th>'
             '<th scope="col">status</th><th scope="col">key numbers</th><th scope="col">first figure</th>'
             f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    if comparisons:
        b.append('<h2 id="comparisons">Comparisons</h2><ul>')
        for kind, link in comparisons.items():
            n = sum(r.kind == kind for r in runs)
            b.append(f'<li><a href="{href(link)}">Compare the {n} {esc(kind)} runs</a>: key numbers side by side, '
                     "configuration differences, overlaid curves and figures</li>")
        b.append("</ul>")
    return page("lossprobe runs", "\n".join(b), "")


def render_compare(kind: str, runs: list[Run]) -> str:
    root = "../"
    b = [f"<h1>Comparing {len(runs)} {esc(kind)} runs</h1>"]
    b.append('<p class="subtitle">Key numbers side by side, what differs in the configuration, '
             "the same curves overlaid and the same figures next to each other.</p>")
    b.append('<h2 id="runs">Runs</h2><ol>' + "".join(
        f'<li><a href="{href(f"../runs/{r.slug}/index.html")}">{esc(r.name)}</a> {_badge(r)} '
        f'<span class="muted">{esc(date(r.started))}</span></li>' for r in runs) + "</ol>")
    head = "".join(f'<th scope="col">{esc(r.name)}</th>' for r in runs)

    def side_by_side(dicts: list[dict], caption: str, only_diff: bool) -> str:
        keys: list[str] = []
        vals: list[dict[str, tuple[str, str]]] = []  # key -> (text shown, exact value for the comparison)
        for d in dicts:
            flat = {k: (f"[{note}]" if note else fmt(v), json.dumps(v, sort_keys=True, default=str))
                    for k, v, note in flatten(d if isinstance(d, dict) else {})}
            vals.append(flat)
            keys += [k for k in flat if k not in keys]
        rows = []
        for k in keys:
            pairs = [v.get(k, ("—", "missing")) for v in vals]
            cells = [c for c, _ in pairs]
            differs = len({exact for _, exact in pairs}) > 1
            if only_diff and not differs:
                continue
            cls = ' class="differs"' if differs and not only_diff else ""
            rows.append(f'<tr{cls}><th scope="row">{esc(k)}</th>' + "".join(f"<td>{esc(c)}</td>" for c in cells)
                        + f"<td>{'differs' if differs else 'same'}</td></tr>")
        if not rows:
            return "<p>No differences.</p>"
        return (f'<div class="table-wrap"><table><caption>{esc(caption)}</caption><thead><tr><th scope="col">key</th>'
                f'{head}<th scope="col">same?</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')

    b.append('<h2 id="numbers">Key numbers</h2>')
    summaries = [{k: v for k, v in (r.summary or {}).items() if k != "verdict"} if isinstance(r.summary, dict)
                 else {} for r in runs]
    verdicts = [(r, r.summary.get("verdict")) for r in runs if isinstance(r.summary, dict)]
    if any(v for _, v in verdicts):
        b.append("<ul>" + "".join(f"<li><strong>{esc(r.name)}</strong>: {esc(v)}</li>" for r, v in verdicts if v)
                 + "</ul>")
    b.append(side_by_side(summaries, "summary.json of each run (rows that differ are marked ≠)", only_diff=False))
    b.append('<h2 id="config-diff">Configuration differences</h2>')
    b.append(side_by_side([r.config for r in runs], "Only the configuration keys whose values differ",
                          only_diff=True))

    plots = compare_plots(runs)
    if plots:
        b.append('<h2 id="curves">Overlaid curves</h2>')
        b += [plot_html(p, f"plot-{i + 1}") for i, p in enumerate(plots)]

    figs: dict[str, list[Run]] = {}
    for r in runs:
        for f in r.figures():
            figs.setdefault(f, []).append(r)
    common = {f: rs for f, rs in figs.items() if len(rs) >= 2}
    if common:
        b.append('<h2 id="figures">Figures side by side</h2>')
        for f, rs in common.items():
            title = _fig_name(f).removeprefix("Figure: ")
            b.append(f'<h3>{esc(title[:1].upper() + title[1:])}</h3><div class="side-by-side">')
            for r in rs:
                cap = _captions(r).get(f) or _fig_name(f)
                src = f"../runs/{r.slug}/files/{f}"
                b.append(f'<figure><img src="{href(src)}" alt="{esc(r.name)}: {esc(cap)}" loading="lazy">'
                         f'<figcaption><a href="{href(f"../runs/{r.slug}/index.html")}">{esc(r.name)}</a>'
                         "</figcaption></figure>")
            b.append("</div>")
    return page(f"Comparing {kind} runs — lossprobe", "\n".join(b), root, plots=bool(plots))
