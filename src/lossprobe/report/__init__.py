"""The report: run directories turned into a static, self-contained HTML site (`site`), with
its page template, style sheet and script in `site_assets/`.

It reads only what runs left on disk, so it may import every layer below it (results, the
probes' result types, figures, studies' declarations) and nothing above it: only the CLI
imports the report.
"""
