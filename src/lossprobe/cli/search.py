"""`lossprobe search --space space.toml --out DIR`: hyperparameter search (default: the benchmark's best method).

With ``--model file.py:build --data TRAIN`` it searches your own model (`lossprobe.search.tune.run`);
without, the built-in mlp/cnn on ``--dataset``.
"""

from __future__ import annotations

import dataclasses
import time

from lossprobe.cli.common import (
    DATA_HELP,
    FORWARD_HELP,
    LOSS_HELP,
    add_out,
    add_ray_timeout,
    finite_float,
    positive_float,
    positive_int,
    seed_int,
)
from lossprobe.data.sources import files_of
from lossprobe.errors import UserError
from lossprobe.figures.search import plot_predicted_vs_actual, plot_search_progress
from lossprobe.results.store import RunDir
from lossprobe.search.engine import (
    Executor,
    LiveOracle,
    TaskSpec,
    check_storage_url,
    default_storage,
    storage_error,
    wait_reporter,
)
from lossprobe.search.methods import DEFAULT_METHOD, DEFAULT_METHOD_TEXT, METHODS
from lossprobe.search.probes import DEFAULT_FAMILIES, FAMILIES, parse_families
from lossprobe.search.space import load_space
from lossprobe.search.tune import DEFAULT_BUDGET, budget_of, loop_config, method_options, run_live
from lossprobe.search.tune import run as run_user_search

USER_ONLY = ("data", "val_data", "test_data", "probe_data", "forward", "objective", "direction", "val_fraction")


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help="hyperparameter search on the clock: cheap probes, a multi-fidelity loop led by a meta-model, or a baseline",
        description="Search the space for the configuration with the best final validation accuracy (or your "
        "objective). Your own model: --model file.py:build --data TRAIN, with a space whose [model] table holds the "
        "builder's arguments and whose [train] table holds fit's options (docs/search.md); without --model, the "
        f"built-in mlp/cnn on --dataset. The default method, '{DEFAULT_METHOD}', is {DEFAULT_METHOD_TEXT}; "
        "docs/search.md says how it was chosen and what it was measured against; --method picks another. Probes are "
        "evaluated on a split carved from the training data (--probe-split), never on the selection split. The "
        "test set is read once, for the chosen configuration. Trials live in Optuna studies, so a killed search "
        "resumes when the same command is run again.",
    )
    p.add_argument("--space", required=True, metavar="TOML",
                   help="search space file (see examples/space.toml; with --model, examples/space_regression.toml)")
    p.add_argument("--method", choices=list(METHODS), default=DEFAULT_METHOD,
                   help=f"search method (default: %(default)s: {DEFAULT_METHOD_TEXT.replace('%', '%%')}; see "
                   "docs/search.md)")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="your model builder: path/to/file.py:function or module:function (key=value arguments may "
                   "follow), called with the space's [model] values; each worker imports it itself")
    p.add_argument("--data", default=None, metavar="TRAIN",
                   help="with --model: the training data. " + DATA_HELP.replace(" (default: %(default)s)", ""))
    p.add_argument("--val-data", default=None, metavar="DATA",
                   help="with --model: the selection split (default: --val-fraction of the training data, carved "
                   "by a seeded permutation)")
    p.add_argument("--test-data", default=None, metavar="DATA",
                   help="with --model: the test split, read once for the chosen configuration (default: no test "
                   "evaluation)")
    p.add_argument("--probe-data", default=None, metavar="DATA",
                   help="with --model: where probes are evaluated (default: --probe-split of the training data, "
                   "carved after the validation split, so never the selection split)")
    p.add_argument("--loss", default="cross_entropy", metavar="LOSS", help="with --model: the " + LOSS_HELP)
    p.add_argument("--forward", default=None, metavar="FN", help="with --model: " + FORWARD_HELP)
    p.add_argument("--objective", default="accuracy", metavar="OBJ",
                   help="with --model: what the search optimises on the validation split: accuracy (maximised), "
                   "loss (the --loss, minimised) or module:function / file.py:function returning a per-sample "
                   "metric [B] from (output, target) (maximised unless --direction min) (default: %(default)s)")
    p.add_argument("--direction", choices=("max", "min"), default=None,
                   help="with --model and a metric objective: maximise (default) or minimise it")
    p.add_argument("--val-fraction", type=positive_float, default=0.2, metavar="F",
                   help="with --model and no --val-data: share of the training data carved off for selection "
                   "(default: %(default)s)")
    p.add_argument("--probe-split", type=positive_float, default=0.1, metavar="F",
                   help="share of the training data carved off (seeded) for evaluating probes, so that probes never "
                   "see the selection split; with --model, when no --probe-data is given (default: %(default)s)")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="built-in mlp/cnn only: fashion-mnist, cifar10:DIR or cifar100:DIR (python-pickle batches in "
                   "DIR), or spiral (tiny synthetic) (default: fashion-mnist)")
    p.add_argument("--n-train", type=positive_int, default=None, metavar="N",
                   help="built-in mlp/cnn only: train on a seeded subset of N training images (default: all)")
    p.add_argument("--n-val", type=positive_int, default=None, metavar="N",
                   help="built-in mlp/cnn only: select on a seeded subset of N validation images (default: all)")
    p.add_argument("--budget", default=None, metavar="B",
                   help="total budget, everything measured (probes, trainings, meta-model) and no new work started "
                   "after it: full trainings of measured time (20x: 20 × the median measured time of the full "
                   "trainings finished so far), or wall-clock time (90s, 15m, 2h); a plain number is full-data "
                   f"epochs, probes included (a probe costs fraction × epochs) (default: {DEFAULT_BUDGET}, the search "
                   "benchmark's budget)")
    p.add_argument("--fraction", type=positive_float, default=0.1, metavar="F",
                   help="fraction of the training data a probe trains on, in (0, 1] (default: %(default)s)")
    p.add_argument("--probe-epochs", type=positive_int, default=1, metavar="E",
                   help="epochs of a probe (default: %(default)s)")
    p.add_argument("--features", default="default", metavar="NAMES",
                   help=f"probe feature families to compute, by name: {', '.join(FAMILIES)} (comma-separated), "
                   f"'all', or 'default' ({', '.join(DEFAULT_FAMILIES)}: those that paid for their measured cost)")
    p.add_argument("--init-probes", type=positive_int, default=None, metavar="N",
                   help="methods probe-rank, probe, mf: candidates probed before the first full training (default: "
                   "24 for probe-rank, 12 for the others); asha-probe: probes before anything is promoted (default: 0, "
                   "plain ASHA)")
    p.add_argument("--probes-per-round", type=positive_int, default=None, metavar="N",
                   help="methods probe-rank, probe: new candidates probed before each further full training (default: "
                   "9 for probe-rank, 6 for probe)")
    p.add_argument("--init-full", type=positive_int, default=3, metavar="N",
                   help="method probe: full trainings chosen by probe val accuracy before the meta-model is used (default: %(default)s)")
    p.add_argument("--kappa", type=finite_float, default=None, metavar="K",
                   help="exploration bonus: score = predicted mean + K × ensemble s.d. (default: 1 for probe, 0 for mf)")
    p.add_argument("--meta", choices=("auto", "rf", "gbr", "et", "ridge"), default="et",
                   help="meta-model: extra trees, random forest, gradient boosting, bagged ridge, or rf/gbr by "
                   "cross-validation (default: %(default)s)")
    p.add_argument("--eta", type=positive_int, default=None, metavar="ETA",
                   help="multi-fidelity methods: a rung promotes its best 1/ETA (defaults tuned on the search "
                   "benchmark's development tables: 9 for mf and the probe-rung methods sh-probe, asha-probe, "
                   "hyperband-probe; 6 for sh, hyperband, asha, bohb)")
    p.add_argument("--rungs", default=None, metavar="RUNGS",
                   help="sh-probe, asha-probe, hyperband-probe: the rungs, e.g. probe,full (the default: the probe, "
                   "then the full training) or probe,full@2,full (a pause after 2 epochs of the full training)")
    p.add_argument("--promotion", choices=("asha", "quota"), default=None,
                   help="asha-probe: a rung promotes any of its top 1/ETA not yet promoted (asha), or also at most "
                   "1/ETA of its candidates in all (quota, the default: tuned on the development tables)")
    p.add_argument("--no-sharpness", action="store_true", help="method probe: leave the sharpness features out")
    p.add_argument("--seed", type=seed_int, default=0, metavar="S",
                   help="seed of candidates, subsets, initialisations and the meta-model (default: %(default)s)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage URL, e.g. sqlite:///search.db or postgresql://... (default: sqlite file OUT/search.db)")
    p.add_argument("--study-name", default="search", metavar="NAME",
                   help="Optuna study name prefix; studies NAME-probes and NAME-full (default: %(default)s)")
    p.add_argument("--backend", choices=("local", "ray", "inprocess"), default="local",
                   help="run trials in this process (local; 'inprocess' is the same) or as Ray tasks, with the "
                        "same names, retries and shutdown as `lossprobe surface --backend` (default: %(default)s)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster address (with --backend ray; default: start a local Ray)")
    add_ray_timeout(p)
    p.add_argument("--num-cpus", type=positive_int, default=None, metavar="N",
                   help="CPUs for a local Ray (with --backend ray; default: all)")
    add_out(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.model is not None:
        return _run_user(args)
    given = [o for o in USER_ONLY if getattr(args, o) not in (None, p_default(o))]
    if given or args.loss != "cross_entropy":
        opt = "--" + (given[0] if given else "loss").replace("_", "-")
        raise UserError(f"{opt} is for your own model: give --model file.py:build and --data TRAIN (the built-in "
                        "mlp/cnn train on --dataset with cross-entropy)")
    args.dataset = args.dataset or "fashion-mnist"
    space = load_space(args.space)
    if not 0 < args.fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.address and args.backend != "ray":
        raise UserError("--address needs --backend ray")
    families = parse_families(args.features)
    bud = budget_of(args.budget, space.epochs, args.fraction, args.probe_epochs)
    budget, axis = bud.value, bud.axis
    if not args.probe_split < 1:
        raise UserError(f"--probe-split must be below 1, got {args.probe_split}")
    kappa = args.kappa if args.kappa is not None else (1.0 if args.method == "probe" else 0.0)
    loop_cfg = loop_config(args.method, bud, args.init_probes, args.probes_per_round, args.init_full, kappa,
                           args.meta, not args.no_sharpness, args.seed)
    spec = TaskSpec(args.dataset, args.n_train, args.n_val, args.seed, probe_split=args.probe_split)
    opts = method_options(args.method, args.eta, args.rungs, args.init_probes, args.promotion, kappa, args.meta)
    method_cfg = {"method": args.method, "budget": budget, "axis": axis, "families": list(families), "eta": args.eta,
                  "kappa": kappa, "meta": args.meta,
                  **({"options": opts} if set(opts) - {"eta", "kappa", "meta"} else {})}
    config = {"space": space.to_dict(), "task": dataclasses.asdict(spec), "loop": dataclasses.asdict(loop_cfg),
              "fraction": args.fraction, "probe_epochs": args.probe_epochs, "storage": args.storage,
              "study_name": args.study_name, **method_cfg}
    if args.storage:
        check_storage_url(args.storage)
    executor = Executor(args.backend, args.address, args.num_cpus, timeout=args.ray_timeout)  # Ray first: fails fast
    task = spec.load()  # load here so that errors about the data come before any output is written
    rd = RunDir(args.out, "search", config, force=args.force, seeds={"search": args.seed},
                inputs={f"--dataset {what}": v for what, v in files_of(args.dataset).items()})
    if rd.done("search", "chosen.json"):
        rd.complete()  # (again, if a kill came between the last two writes)
        ch = rd.load_json("chosen.json")
        print(f"search already complete: candidate #{ch['candidate']} val acc {ch['val_accuracy']:.4f}, "
              f"test acc {ch['test_accuracy']:.4f} (the test set is not read again); see {rd.path}")
        return 0
    storage = args.storage or default_storage(rd.path)
    unit = bud.unit

    def on_job(e):
        head = f"[{e['spent']:8.1f}/{budget:g}{unit}]" if axis != "trainings" else f"[{e['spent']:8.1f}s/{budget:g}x]"
        again = " (stored)" if e["reused"] else ""
        if e["kind"] == "probe":
            print(f"{head} probe #{e['key']:<4d} val acc {e['value']:.4f} ({e['seconds']:.2f} s){again}", flush=True)
        else:
            tag = "full " if e["kind"] == "full" else f"ep {e['epoch']:<2d}"
            print(f"{head} {tag} #{e['key']:<4d} val acc {e['value']:.4f} ({e['seconds']:.2f} s){again}", flush=True)

    on_wait = wait_reporter(storage, print)  # another worker on the same storage holds a piece

    oracle = None
    try:
        oracle = LiveOracle(space, spec, storage, args.study_name, args.fraction, args.probe_epochs, args.seed,
                            executor, checkpoint_dir=rd.subdir("checkpoints"),
                            settings={"loop": dataclasses.asdict(loop_cfg), **method_cfg}, on_job=on_job,
                            families=families, on_wait=on_wait, **bud.oracle_kwargs())
        return _search(args, rd, space, task, loop_cfg, bud, opts, storage, oracle)
    except Exception as e:
        if type(e).__module__.startswith("sqlalchemy"):  # the storage failed part-way: one line
            raise storage_error(e, storage) from None
        raise
    finally:
        if oracle is not None:
            oracle.close()


def _search(args, rd, space, task, loop_cfg, bud, opts, storage, oracle) -> int:
    families = oracle.families
    budget, unit, axis = bud.value, bud.unit, bud.axis
    if oracle.reused["probes"] or oracle.reused["full"]:
        print(f"resuming: {oracle.reused['probes']} probes and {oracle.reused['full']} full trainings already in {storage}")
    pv = task.probe_val
    print(f"searching {len(space.params)} hyperparameters on {args.dataset} ({len(task.train)} train, "
          f"{len(task.val)} val, {len(pv) if pv is not None else 0} probe images) with '{args.method}'"
          f"{' (default)' if args.method == DEFAULT_METHOD else ''}; budget {bud.describe()}; probe = "
          f"{args.fraction:g} of the training images × {args.probe_epochs} epochs, evaluated on the probe split "
          f"(features: {', '.join(families)}), full training = {space.epochs} epochs")
    t0 = time.perf_counter()
    predictions = run_live(args.method, oracle, loop_cfg, args.seed, opts)
    ch = oracle.trace.chosen
    if ch is None:
        raise UserError(f"the budget ({budget:g}{unit}) ended before any full training finished; give a larger --budget")
    val_acc = max(v for k, v in zip(oracle.trace.keys, oracle.trace.values) if k == ch)
    test_acc = oracle.test_accuracy(ch)  # the only time the test set is read
    chosen = {"candidate": ch, "values": oracle.values(ch), "full_config": space.complete(oracle.values(ch)),
              "val_accuracy": val_acc, "test_accuracy": test_acc, "method": args.method, "budget": budget, "axis": axis,
              "spent": oracle.clock.spent, "spent_by_kind": oracle.clock.by_kind,
              "test_evaluated_by_this_worker": oracle.test_evaluated_here,
              "checkpoint": f"checkpoints/candidate-{ch}.safetensors"}
    rd.save_json("chosen.json", chosen)
    events = oracle.events
    full = [e for e in events if e["kind"] == "full"]
    rd.save_json("events.json", events)

    figs = [plot_search_progress(events, budget if axis != "trainings" else oracle.clock.budget, rd.figures,
                                 args.dataset, xlabel="budget spent (s)" if axis != "epochs" else None)]
    if predictions is not None:
        pf = [e for e in predictions.events if e.kind == "full"]
        rd.save_json("predictions.json", {
            "chosen_when_trained": [{"candidate": e.key, "predicted": e.predicted, "predicted_std": e.predicted_std,
                                     "actual": e.value} for e in pf],
            "last_fit_untrained": [{"candidate": k, "values": oracle.values(k), "predicted": m, "predicted_std": s}
                                   for k, (m, s) in sorted(predictions.predictions.items(), key=lambda kv: -kv[1][0])],
        })
        withmeta = [e for e in pf if e.predicted_std]
        if withmeta:
            figs.append(plot_predicted_vs_actual([e.predicted for e in withmeta], [e.predicted_std for e in withmeta],
                                                 [e.value for e in withmeta], rd.figures, args.dataset))
    summary = {"chosen": chosen, "method": args.method, "default_method": DEFAULT_METHOD,
               "method_is_default": args.method == DEFAULT_METHOD, "features": list(families),
               "n_probes": sum(e["kind"] == "probe" for e in events), "n_full": len(full),
               "storage": storage, "seconds": time.perf_counter() - t0}
    rd.save_json("summary.json", summary)
    rd.write_text("report.md",
        f"# Hyperparameter search on {args.dataset} ({args.method})\n\n"
        f"Budget {bud.describe()} ({oracle.clock.spent:.1f}{' s' if axis != 'epochs' else ''} spent): {summary['n_probes']} probes, "
        f"{len(full)} full trainings.\n\nChosen: candidate #{ch} `{oracle.values(ch)}`, validation accuracy "
        f"**{val_acc:.4f}**, test accuracy **{test_acc:.4f}** (test set read once, after selection).\n\n"
        + "".join(f"![{n}](figures/{n}.png)\n\n" for n in figs))
    rd.mark("search")
    rd.complete()
    print(f"chosen candidate #{ch}: {oracle.values(ch)}")
    how = ("evaluated now; the test set was opened once" if oracle.test_evaluated_here
           else "recorded in the storage by the worker that evaluated it; the test set was not opened here")
    print(f"validation accuracy {val_acc:.4f}, test accuracy {test_acc:.4f} ({how}); wrote {rd.path}")
    return 0


_DEFAULTS = {"objective": "accuracy", "val_fraction": 0.2}


def p_default(option: str):
    return _DEFAULTS.get(option)


def _run_user(args) -> int:
    """`lossprobe search --model file.py:build --data TRAIN ...`: your own model (lossprobe.search.tune.run)."""
    if args.dataset is not None or args.n_train or args.n_val:
        opt = "--dataset" if args.dataset is not None else ("--n-train" if args.n_train else "--n-val")
        raise UserError(f"{opt} is for the built-in mlp/cnn; with --model give your data with --data TRAIN "
                        "[--val-data VAL] [--test-data TEST]")
    if args.data is None:
        raise UserError("--model needs --data: the training data (a tensor file, module:function, "
                        "imagefolder:DIR, ...)")
    run_user_search(
        args.model, args.data, args.space, val_data=args.val_data, test_data=args.test_data,
        probe_data=args.probe_data, loss=args.loss, forward=args.forward, objective=args.objective,
        direction=args.direction, method=args.method, budget=args.budget, out=args.out, storage=args.storage,
        study_name=args.study_name, seed=args.seed, fraction=args.fraction, probe_epochs=args.probe_epochs,
        features=args.features, val_fraction=args.val_fraction, probe_split=args.probe_split,
        backend=args.backend, address=args.address, num_cpus=args.num_cpus, ray_timeout=args.ray_timeout,
        eta=args.eta, kappa=args.kappa, meta=args.meta, init_probes=args.init_probes,
        probes_per_round=args.probes_per_round, init_full=args.init_full, sharpness=not args.no_sharpness,
        rungs=args.rungs, promotion=args.promotion, force=args.force, verbose=True)
    return 0
