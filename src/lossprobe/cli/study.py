"""`lossprobe study NAME`: the ready-made studies (see lossprobe.studies.STUDIES).

Each study's flags are built here from its configuration's fields (`lossprobe.studies.base.option`),
and every value follows one rule (`lossprobe.config.load`):
defaults < presets (--quick, --deep) < the --config TOML file < explicit flags.
"""

from __future__ import annotations

import dataclasses
import importlib

from lossprobe.cli.common import add_out
from lossprobe.report.site import build_run_site
from lossprobe.runtime import config as config_mod
from lossprobe.studies import STUDIES
from lossprobe.studies.base import flags, run_study


def register(sub) -> None:
    p = sub.add_parser("study", help="run a ready-made study end to end and write a report",
                       description="Run a ready-made study. Each writes a run directory with config.json, "
                       "environment.json, summary.json, arrays, figures and report.md; rerunning the same "
                       "command on the same --out resumes it. Every value comes from, in rising priority: the "
                       "study's defaults, --quick (and other presets), the --config TOML file, the flags given.")
    studies = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    for name, (module, help_text) in STUDIES.items():
        study = importlib.import_module(module).STUDY
        sp = studies.add_parser(name, help=help_text, description=help_text)
        add_arguments(sp, study)
        sp.add_argument("--no-site", action="store_true",
                        help="do not build the HTML report site in DIR/site at the end")
        sp.set_defaults(func=_with_site(lambda args, study=study: run_cli(study, args)))


def add_arguments(p, study) -> None:
    """--out, --force, --config, one flag per flagged configuration field, one per preset."""
    add_out(p, default=study.default_out)
    p.add_argument("--config", metavar="FILE.toml",
                   help="TOML file with any of: " + ", ".join(f.name for f in dataclasses.fields(study.config))
                   + " (its keys win over presets such as --quick; flags win over it)")
    for f in flags(study.config):
        kw = dict(f.metadata["argparse"])
        if callable(kw.get("choices")):
            kw["choices"] = kw["choices"]()
        if kw.get("action") in ("store_true", "store_false", "append") or "action" not in kw:
            kw.setdefault("default", None)  # None: not given, so the file or a preset decides
        text = f.metadata["help"]
        p.add_argument(f.metadata["flag"], dest=f.name, help=text() if callable(text) else text, **kw)
    for preset in study.presets:
        p.add_argument(f"--{preset.name}", action="store_true", help=preset.help)


def load_config(study, args):
    """The configuration from the defaults, the presets asked for, --config and the flags given."""
    overrides = {f.name: getattr(args, f.name) for f in flags(study.config) if getattr(args, f.name) is not None}
    chosen = [p for p in study.presets if getattr(args, p.name.replace("-", "_"))]
    presets = {}
    if chosen:
        given = config_mod.load(study.config, args.config, overrides)  # what the user set, for presets that depend on it
        for p in chosen:
            presets.update(p.resolve(given))
    return config_mod.load(study.config, args.config, overrides, presets=presets or None)


def run_cli(study, args) -> int:
    summary = run_study(study, args.out, load_config(study, args), force=args.force)
    for line in study.cli_lines(summary, args.out):
        print(line)
    return 0


def _with_site(run_cli):
    """Run a study, then build its report site in <out>/site (never failing the study)."""

    def run(args) -> int:
        code = run_cli(args)
        if code == 0 and not args.no_site:

            site = build_run_site(args.out)
            if site is not None:
                print(f"report site: {site}")
        return code

    return run
