"""Can the tests fail? Each entry below breaks the library on purpose in a throwaway copy of
src/ and runs the tests meant to catch that fault against the copy (PYTHONPATH puts it first,
subprocesses of the CLI inherit it); the tests must fail there and pass on the real code.

Prints one JSON line per broken copy: its name, the fault, the tests, how many of them fail on
the broken copy with pytest's summary line (all of them should), the tests that did not catch
the fault, and pytest's summary on the real code; exits 1 when a test passes on a broken copy
or fails on the real code.

    python benchmarks/broken_copies.py            # every broken copy
    python benchmarks/broken_copies.py NAME ...   # these only
    python benchmarks/broken_copies.py --list
    python benchmarks/broken_copies.py --before REV [NAME ...]   # also run REV's tests on each broken copy

`--before REV` shows what the strengthening bought: the same tests as they were at REV (e.g.
the commit before they were strengthened), run on the same broken copy, usually pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (fault, file under src/lossprobe, [(text, replacement), ...], tests)
BROKEN = {
    "fit-ignores-checkpoint": (
        "fit retrains from epoch 0 instead of loading the checkpoint directory",
        "training/loop.py",
        [("        resumed = _load_state(ckpt, model, opt)\n", "        resumed = None\n")],
        ["tests/test_train.py::test_interrupted_training_resumes_to_identical_weights",
         "tests/test_recipes.py::test_warmup_and_augmentation_resume_identically"],
    ),
    "curve-ignores-checkpoint": (
        "train_curve trains the bends from epoch 1 instead of loading curve_state.pt",
        "connectivity/curves.py",
        [("        if f.is_file():\n", "        if False:\n")],
        ["tests/test_curves.py::test_resume_gives_the_same_bends"],
    ),
    "stages-recomputed": (
        "run_stage computes a stage again although status.json says it finished",
        "studies/base.py",
        [("    if stage.resume and rd.done(stage.name, *stage.files):", "    if False:")],
        ["tests/test_study_framework.py::test_stages_resume_and_are_timed",
         "tests/test_architectures.py::test_quick_study_summary_and_resume",
         "tests/test_width.py::test_width_study_tiny",
         "tests/test_search_benchmark_study.py::test_study_on_a_cached_table"],
    ),
    "replays-recomputed": (
        "the search benchmark replays every method again instead of reusing its saved replay",
        "studies/search_benchmark.py",
        [("            if f.is_file():\n", "            if False:\n")],
        ["tests/test_search_benchmark_study.py::test_study_on_a_cached_table"],
    ),
    "surface-chunks-recomputed": (
        "a resumed surface computes every chunk again (and still reports the chunks it found)",
        "landscape/surfaces.py",
        [('        meta["resumed_chunks"] = n_chunks - len(todo)\n',
          '        meta["resumed_chunks"] = n_chunks - len(todo)\n        todo = list(range(n_chunks))\n')],
        ["tests/test_surface.py::test_resume_skips_done_chunks_and_refuses_another_surface",
         "tests/test_surface.py::test_cli_surface_and_slice",
         "tests/test_surface_resume.py::test_sigkill_then_resume_computes_only_missing_chunks",
         "tests/test_bad_inputs.py::test_damaged_derived_files_are_recomputed_on_resume"],
    ),
    "eig-save-drops-ritz-values": (
        "EigResult.to_arrays leaves all_ritz_values out, so save/load loses them",
        "curvature/algorithms.py",
        [('            out[f"{prefix}all_ritz_values"] = np.asarray(self.all_ritz_values)\n', "            pass\n")],
        ["tests/test_results.py::test_save_load_round_trip[EigResult-0]"],
    ),
    "eig-json-drops-ritz-values": (
        "EigResult.to_dict leaves all_ritz_values out (as it did before), so the JSON round trip loses them",
        "curvature/algorithms.py",
        [('            d["all_ritz_values"] = np.asarray(self.all_ritz_values).tolist()\n', "            pass\n")],
        ["tests/test_results.py::test_dict_round_trip[EigResult-0]"],
    ),
    "surface-drops-subset-indices": (
        "Surface.to_arrays leaves the subset indices out",
        "landscape/surfaces.py",
        [('            out[prefix + "subset_indices"] = self.subset_indices\n', "            pass\n")],
        ["tests/test_results.py::test_save_load_round_trip[Surface-0]",
         "tests/test_results.py::test_dict_round_trip[Surface-0]"],
    ),
    "noise-drops-seed": (
        "NoiseRobustness.metadata leaves the seed out (from_arrays then says 0)",
        "curvature/sharpness.py",
        [('"draws": self.draws,\n                "seed": self.seed}', '"draws": self.draws}')],
        ["tests/test_results.py::test_save_load_round_trip[NoiseRobustness-0]"],  # to_dict is its own
    ),
    "record-null-stays-none": (
        "Record.from_dict keeps JSON's null where a float field held NaN (History before this fix)",
        "results/contract.py",
        [("_nan_for_null(d[f.name], hints.get(f.name))", "d[f.name]")],
        ["tests/test_results.py::test_save_load_round_trip[History-1]",
         "tests/test_results.py::test_dict_round_trip[History-1]"],
    ),
    "eigenvalues-smallest": (
        "Lanczos reports the smallest Ritz pair when asked for the largest",
        "curvature/algorithms.py",
        [("        return order[::-1][:k]\n", "        return order[:k]\n")],
        ["tests/test_compat.py::test_hessian_top_eigenvalue"],
    ),
    "eigenvalues-second": (
        "Lanczos reports the second-largest Ritz pair as the largest",
        "curvature/algorithms.py",
        [("        return order[::-1][:k]\n", "        return order[::-1][1:k + 1]\n")],
        ["tests/test_compat.py::test_hessian_top_eigenvalue"],
    ),
    "write-bytes-in-place": (
        "write_bytes (JSON, safetensors, report.md) writes straight to the final name, not through open_atomic",
        "results/atomic.py",
        [('    with open_atomic(path, "wb", size_hint=len(data)) as f:\n        f.write(data)\n',
          '    Path(path).parent.mkdir(parents=True, exist_ok=True)\n    with open(path, "wb") as f:\n'
          '        f.write(data)\n')],
        ["tests/test_faults.py::test_full_tmpfs_is_one_line_leaves_whole_files_and_resumes"],
    ),
    "figures-in-place": (
        "save_figure writes PNG/SVG with savefig straight to the final name",
        "results/drawing.py",
        [('            with open_atomic(p, "wb") as f:  # whole files only, even on a full disk\n',
          '            p.parent.mkdir(parents=True, exist_ok=True)\n            with open(p, "wb") as f:\n')],
        ["tests/test_faults.py::test_full_tmpfs_is_one_line_leaves_whole_files_and_resumes"],
    ),
    "temp-left-on-error": (
        "a failed atomic write leaves its temporary file behind",
        "results/atomic.py",
        [("        _unlink_quietly(tmp)\n        raise describe(e, path, needed=needed) from None\n",
          "        raise describe(e, path, needed=needed) from None\n")],
        ["tests/test_faults.py::test_full_tmpfs_is_one_line_leaves_whole_files_and_resumes"],
    ),
    "safetensors-error-escapes": (
        "save_safetensors writes with safetensors' own (Rust) writer into the temporary file: atomic, but a "
        "full disk raises SafetensorError, not OSError, so the command ends in a traceback",
        "results/atomic.py",
        [("    return write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))\n",
          "    from safetensors.torch import save_file\n\n    with writing_to(path) as tmp:\n"
          "        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))\n"
          "    return Path(path)\n")],
        ["tests/test_faults.py::test_full_tmpfs_is_one_line_leaves_whole_files_and_resumes"],
    ),
    "mkdir-error-escapes": (
        "makedirs lets an OS error out as a RuntimeError (a traceback, not the one line)",
        "results/atomic.py",
        [('            raise describe(e, d, "create the folder") from None\n',
          '            raise RuntimeError(f"mkdir {d} failed") from e\n')],
        ["tests/test_faults.py::test_read_only_mount_is_one_line_and_writes_nothing",
         "tests/test_faults.py::test_unwritable_out_is_one_line"],
    ),
    "toy-paths-draw-nothing": (
        "plot_toy_paths saves the contours but draws no optimiser path",
        "figures/trajectories.py",
        [("    for (label, r), st in zip(runs.items(), styles()):\n",
          "    for (label, r), st in zip(list(runs.items())[:0], styles()):\n")],
        ["tests/test_trajectory_plots.py::test_toy_paths_figure_and_gif"],
    ),
    "plane-paths-drop-last": (
        "plot_plane_paths leaves the last path out",
        "figures/trajectories.py",
        [("    for (label, c), st in zip(paths.items(), styles()):\n        c = np.asarray(c)\n"
          "        ax.plot(c[:, 0], c[:, 1], color=st[\"color\"], linestyle=st[\"linestyle\"], linewidth=1.3,",
          "    for (label, c), st in zip(list(paths.items())[:-1], styles()):\n        c = np.asarray(c)\n"
          "        ax.plot(c[:, 0], c[:, 1], color=st[\"color\"], linestyle=st[\"linestyle\"], linewidth=1.3,")],
        ["tests/test_trajectory_plots.py::test_plane_paths_and_fidelity_figures"],
    ),
    "fidelity-drops-surface-series": (
        "plot_fidelity leaves out the dashed surface-loss series",
        "figures/trajectories.py",
        [('        ax_l.plot(steps, f["surface_loss"], color=st["color"], linestyle="--", linewidth=1,\n'
          '                  label=f"{label}: contour under the point")\n', "")],
        ["tests/test_trajectory_plots.py::test_plane_paths_and_fidelity_figures"],
    ),
    "declared-plot-drops-series": (
        "draw (Result.figure, plot_declared) draws only the first series of a line declaration",
        "results/drawing.py",
        [("        for s in spec.series:\n", "        for s in spec.series[:1]:\n")],
        ["tests/test_results.py::test_figure_draws_the_declarations",
         "tests/test_cli_plots.py::test_path_commands_declare_loss_and_accuracy_along_the_path"],
    ),
    "slice-figure-drops-accuracy": (
        "plot_slice draws no accuracy curve",
        "figures/surfaces.py",
        [('    ax_a.plot(x, 100 * acc, markersize=3, **{**st, "linestyle": "--", "marker": "s"})\n', "")],
        ["tests/test_surface.py::test_plots_and_exports"],
    ),
    "interpolation-figure-drops-accuracy": (
        "plot_interpolation (the interpolate command's figure) draws no accuracy curve",
        "figures/paths.py",
        [("        ax_a.plot(a, 100 * acc, label=split, markersize=4, **st)\n", "")],
        ["tests/test_cli_plots.py::test_path_commands_declare_loss_and_accuracy_along_the_path"],
    ),
}


def run_tests(src: Path, tests: list[str], root: Path = ROOT) -> dict:
    """Run `tests` with lossprobe imported from `src`: {"rc", "failed": the tests (of those asked
    for) with a failing test, "summary": pytest's last line, "seconds"}."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    where = subprocess.run([sys.executable, "-c", "import lossprobe; print(lossprobe.__file__)"], env=env,
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    if not where.startswith(str(src)):
        raise SystemExit(f"lossprobe imports from {where}, not from {src}")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pytest", "-rfE", "-p", "no:cacheprovider", *tests], env=env,
                       capture_output=True, text=True, cwd=root)
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    failing = [line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return {"rc": p.returncode, "failed": [x for x in tests if any(f == x or f.startswith(x + "[") or
                                                                   f.startswith(x + "::") for f in failing)],
            "summary": lines[-1].strip("= ") if lines else "", "seconds": round(time.perf_counter() - t, 1)}


def broken_copy(tmp: Path, file: str, edits: list[tuple[str, str]]) -> Path:
    src = tmp / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    path = src / "lossprobe" / file
    text = path.read_text()
    for old, new in edits:
        if text.count(old) != 1:
            raise SystemExit(f"{file}: the text to break occurs {text.count(old)} times, not once: {old!r}")
        text = text.replace(old, new)
    path.write_text(text)
    return src


def main(argv: list[str]) -> int:
    if argv[:1] == ["--list"]:
        for name, (fault, *_rest) in BROKEN.items():
            print(f"{name}: {fault}")
        return 0
    before = None
    if argv[:1] == ["--before"]:
        before, argv = argv[1], argv[2:]
    names = argv or list(BROKEN)
    unknown = [n for n in names if n not in BROKEN]
    if unknown:
        raise SystemExit(f"unknown broken copies {unknown}; see --list")
    bad = 0
    for name in names:
        fault, file, edits, tests = BROKEN[name]
        line = {"name": name, "fault": fault, "tests": tests}
        with tempfile.TemporaryDirectory(prefix=f"broken-{name}-") as tmp:
            src = broken_copy(Path(tmp), file, edits)
            broken = run_tests(src, tests)
            if before is not None:
                old = Path(tmp) / "before"
                old.mkdir()
                archive = subprocess.run(["git", "-C", str(ROOT), "archive", before], capture_output=True, check=True)
                subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
                was = run_tests(src, tests, root=old)
        real = run_tests(ROOT / "src", tests)
        survived = [x for x in tests if x not in broken["failed"]]
        bad += bool(survived) or real["rc"] != 0
        line.update({"broken": f"{len(broken['failed'])}/{len(tests)} tests fail: {broken['summary']}",
                     "not_caught_by": survived, "real": real["summary"]})
        if before is not None:
            line[f"tests_at_{before}_on_broken"] = f"{len(was['failed'])}/{len(tests)} fail: {was['summary']}"
        print(json.dumps(line), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
