"""`lossprobe search --space space.toml --out DIR`: probe-based hyperparameter search."""

from __future__ import annotations

import time

from .common import add_out, add_ray_timeout, finite_float, positive_float, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help="probe-based hyperparameter search: probe many candidates cheaply, fully train the most promising",
        description="Probe candidates from the search space on a seeded fraction of the training data for a "
        "few epochs, predict their final validation accuracy with a random-forest / gradient-boosting "
        "meta-model, fully train the most promising (predicted mean + kappa × ensemble s.d.), refit, and "
        "repeat until the budget is spent. The test set is read once, for the chosen configuration. "
        "Trials live in Optuna studies, so a killed search resumes when the same command is run again.",
    )
    p.add_argument("--space", required=True, metavar="TOML", help="search space file (see examples/space.toml)")
    p.add_argument("--dataset", default="fashion-mnist", metavar="NAME",
                   help="fashion-mnist, cifar10:DIR or cifar100:DIR (python-pickle batches in DIR), or spiral "
                   "(tiny synthetic) (default: %(default)s)")
    p.add_argument("--n-train", type=positive_int, default=None, metavar="N",
                   help="train on a seeded subset of N training images (default: all)")
    p.add_argument("--n-val", type=positive_int, default=None, metavar="N",
                   help="select on a seeded subset of N validation images (default: all)")
    p.add_argument("--budget", type=positive_float, default=None, metavar="EPOCHS",
                   help="total budget in full-data epoch equivalents, probes included "
                   "(default: 10 full trainings, i.e. 10 × the space's epochs)")
    p.add_argument("--fraction", type=positive_float, default=0.2, metavar="F",
                   help="fraction of the training data a probe trains on, in (0, 1] (default: %(default)s)")
    p.add_argument("--probe-epochs", type=positive_int, default=2, metavar="E",
                   help="epochs of a probe (default: %(default)s)")
    p.add_argument("--init-probes", type=positive_int, default=12, metavar="N",
                   help="candidates probed before the first full training (default: %(default)s)")
    p.add_argument("--probes-per-round", type=positive_int, default=6, metavar="N",
                   help="new candidates probed before each further full training (default: %(default)s)")
    p.add_argument("--init-full", type=positive_int, default=3, metavar="N",
                   help="full trainings chosen by probe val accuracy before the meta-model is used (default: %(default)s)")
    p.add_argument("--kappa", type=finite_float, default=1.0, metavar="K",
                   help="exploration bonus: score = predicted mean + K × ensemble s.d. (default: %(default)s)")
    p.add_argument("--meta", choices=("auto", "rf", "gbr"), default="auto",
                   help="meta-model: random forest, gradient boosting, or whichever cross-validates better (default: %(default)s)")
    p.add_argument("--no-sharpness", action="store_true", help="leave the sharpness features out of the meta-model")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of candidates, subsets, initialisations and the meta-model (default: %(default)s)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage URL, e.g. sqlite:///search.db or postgresql://... (default: sqlite file OUT/search.db)")
    p.add_argument("--study-name", default="search", metavar="NAME",
                   help="Optuna study name prefix; studies NAME-probes and NAME-full (default: %(default)s)")
    p.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess",
                   help="run trials in this process or as Ray tasks (default: %(default)s)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster address (with --backend ray; default: start a local Ray)")
    add_ray_timeout(p)
    p.add_argument("--num-cpus", type=positive_int, default=None, metavar="N",
                   help="CPUs for a local Ray (with --backend ray; default: all)")
    add_out(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses

    from ..errors import UserError
    from ..search.engine import Executor, LiveOracle, TaskSpec, check_storage_url, default_storage, storage_error
    from ..search.loop import LoopConfig
    from ..search.space import load_space
    from ..store import RunDir

    space = load_space(args.space)
    if not 0 < args.fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.address and args.backend != "ray":
        raise UserError("--address needs --backend ray")
    budget = args.budget if args.budget is not None else 10.0 * space.epochs
    if budget < space.epochs:
        raise UserError(f"--budget {budget:g} is less than one full training ({space.epochs} epochs); give at least "
                        f"{space.epochs + args.fraction * args.probe_epochs:g}")
    loop_cfg = LoopConfig(budget=budget, probes_per_round=args.probes_per_round, init_probes=args.init_probes,
                          init_full=args.init_full, kappa=args.kappa, meta=args.meta,
                          sharpness=not args.no_sharpness, seed=args.seed)
    spec = TaskSpec(args.dataset, args.n_train, args.n_val, args.seed)
    config = {"space": space.to_dict(), "task": dataclasses.asdict(spec), "loop": dataclasses.asdict(loop_cfg),
              "fraction": args.fraction, "probe_epochs": args.probe_epochs,
              "storage": args.storage, "study_name": args.study_name}
    if args.storage:
        check_storage_url(args.storage)
    executor = Executor(args.backend, args.address, args.num_cpus, timeout=args.ray_timeout)  # Ray first: fails fast
    task = spec.load()  # load here so that errors about the data come before any output is written
    rd = RunDir(args.out, "search", config, force=args.force, seeds={"search": args.seed})
    if rd.done("search", "chosen.json"):
        rd.complete()  # (again, if a kill came between the last two writes)
        ch = rd.load_json("chosen.json")
        print(f"search already complete: candidate #{ch['candidate']} val acc {ch['val_accuracy']:.4f}, "
              f"test acc {ch['test_accuracy']:.4f} (the test set is not read again); see {rd.path}")
        return 0
    storage = args.storage or default_storage(rd.path)
    waiting = set()

    def on_wait(kind, keys):  # another worker on the same storage holds these
        if (kind, tuple(keys)) not in waiting:
            waiting.add((kind, tuple(keys)))
            what = "the final test evaluation" if kind == "test" else f"{kind} #" + ", #".join(map(str, keys))
            print(f"  waiting for another worker on {storage} to finish {what}", flush=True)

    oracle = None
    try:
        oracle = LiveOracle(space, spec, storage, args.study_name, args.fraction, args.probe_epochs, args.seed,
                            executor, checkpoint_dir=rd.subdir("checkpoints"),
                            settings={"loop": dataclasses.asdict(loop_cfg)}, on_wait=on_wait)
        return _search(args, rd, space, task, loop_cfg, budget, storage, oracle)
    except Exception as e:
        if type(e).__module__.startswith("sqlalchemy"):  # the storage failed part-way: one line
            raise storage_error(e, storage) from None
        raise
    finally:
        if oracle is not None:
            oracle.close()


def _search(args, rd, space, task, loop_cfg, budget, storage, oracle) -> int:
    import dataclasses

    from ..search.loop import probe_search

    if oracle.reused["probes"] or oracle.reused["full"]:
        print(f"resuming: {oracle.reused['probes']} probes and {oracle.reused['full']} full trainings already in {storage}")
    print(f"searching {len(space.params)} hyperparameters on {args.dataset} ({len(task.train)} train, "
          f"{len(task.val)} val images); budget {budget:g} epochs; probe = {args.fraction:g} of the data × "
          f"{args.probe_epochs} epochs (cost {oracle.probe_cost:g}), full training = {space.epochs} epochs")
    t0 = time.perf_counter()
    events = []

    def on_event(e, res):
        d = dataclasses.asdict(e)
        events.append(d)
        head = f"[{e.spent:7.1f}/{budget:g}]"
        if e.kind == "full":
            full = [x for x in events if x["kind"] == "full"]
            best = max(full, key=lambda x: x["value"])
            pred = f"predicted {e.predicted:.4f} ± {e.predicted_std:.4f}" if e.predicted_std else f"probe val acc {e.predicted:.4f}"
            print(f"{head} full  #{e.key:<4d} val acc {e.value:.4f} ({pred}); best so far #{best['key']} {best['value']:.4f}",
                  flush=True)

    def on_job(kind, key, r):  # printed as each probe finishes (the loop's own event comes per batch)
        print(f"  probe #{key:<4d} val acc {r['features']['val_acc']:.4f} ({r['seconds']:.2f} s)", flush=True)

    oracle.on_job = on_job
    result = probe_search(oracle, loop_cfg, on_event=on_event, final_test=oracle.test_accuracy)
    ch = result.chosen
    ckpt = f"checkpoints/candidate-{ch}.safetensors"
    chosen = {"candidate": ch, "values": oracle.values(ch), "full_config": space.complete(oracle.values(ch)),
              "val_accuracy": result.chosen_val_accuracy, "test_accuracy": result.test_accuracy,
              "test_evaluated_by_this_worker": oracle.test_evaluated_here,
              "budget": budget, "spent": result.spent, "meta_model": result.meta_kind,
              "checkpoint": ckpt if (rd / ckpt).is_file() else None}
    rd.save_json("chosen.json", chosen)
    full = [e for e in events if e["kind"] == "full"]
    rd.save_json("events.json", events)
    rd.save_json("predictions.json", {
        "chosen_when_trained": [{"candidate": e["key"], "predicted": e["predicted"], "predicted_std": e["predicted_std"],
                                 "actual": e["value"]} for e in full],
        "last_fit_untrained": [{"candidate": k, "values": oracle.values(k), "predicted": m, "predicted_std": s}
                               for k, (m, s) in sorted(result.predictions.items(), key=lambda kv: -kv[1][0])],
    })
    from ..report.search_plots import plot_predicted_vs_actual, plot_search_progress

    figs = [plot_search_progress(events, budget, rd.figures, args.dataset)]
    withmeta = [e for e in full if e["predicted_std"]]
    if withmeta:
        figs.append(plot_predicted_vs_actual([e["predicted"] for e in withmeta], [e["predicted_std"] for e in withmeta],
                                             [e["value"] for e in withmeta], rd.figures, args.dataset))
    summary = {"chosen": chosen, "n_probes": sum(e["kind"] == "probe" for e in events), "n_full": len(full),
               "storage": storage, "seconds": time.perf_counter() - t0}
    rd.save_json("summary.json", summary)
    rd.write_text("report.md",
        f"# Probe-based search on {args.dataset}\n\n"
        f"Budget {budget:g} full-data epochs ({result.spent:g} spent): {summary['n_probes']} probes, "
        f"{len(full)} full trainings.\n\nChosen: candidate #{ch} `{oracle.values(ch)}`, validation accuracy "
        f"**{result.chosen_val_accuracy:.4f}**, test accuracy **{result.test_accuracy:.4f}** (test set read once, "
        "after selection).\n\n" + "".join(f"![{n}](figures/{n}.png)\n\n" for n in figs))
    rd.mark("search")
    rd.complete()
    print(f"chosen candidate #{ch}: {oracle.values(ch)}")
    how = ("evaluated now; the test set was opened once" if oracle.test_evaluated_here
           else "recorded in the storage by the worker that evaluated it; the test set was not opened here")
    print(f"validation accuracy {result.chosen_val_accuracy:.4f}, test accuracy {result.test_accuracy:.4f} ({how}); "
          f"wrote {rd.path}")
    return 0
