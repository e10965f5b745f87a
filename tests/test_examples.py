"""Every example in README.md and docs/ runs as written (tests/doc_examples.py says how).

One test per page runs its blocks in order in a fresh interpreter and directory; a failure
names the page, the block's line and the command. Blocks marked
``<!-- no-run: REASON -->`` are each reported as a skipped test with their reason.

The pages are independent, so their runs start together when the first page's test runs, two
at a time (each with one torch thread: on a 2-core machine that halves the wall time); each
page's test then waits for its own run. About 6 CPU minutes in all (README.md about 100 s).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import needs_fashion
from doc_examples import ROOT, blocks, pages, problems

PAGES = [p for p in pages() if blocks(p)]
MARKED = [b for p in PAGES for b in blocks(p) if b.no_run]
# limits per page: CPU seconds (the longest page, README.md, takes about 100) and, for an example
# that hangs, wall-clock seconds (generous: on a loaded shared machine wall time was 8× the CPU time)
PAGE_CPU_LIMIT = 600
PAGE_TIMEOUT = 1800
WORKERS = max(1, min(2, os.cpu_count() or 1))
# longest first, so that two workers finish together (measured CPU seconds, README.md ≈ 100)
ORDER = ["README.md", "docs/curvature.md", "docs/surfaces.md", "docs/connectivity.md", "docs/trajectories.md",
         "docs/report.md"]


def test_every_block_runs_or_says_why_not():
    """A block in a language the runner does not know, or a command it cannot run, must be
    changed or marked no-run with a reason: nothing is left out silently."""
    bad = [msg for p in PAGES for b in blocks(p) for msg in problems(b)]
    assert bad == []


def test_block_parser():
    from doc_examples import Block, commands, unsupported

    assert commands("# c\nlossprobe a \\\n  --b 1   # note\npython x.py && lossprobe c\n") == [
        ["lossprobe", "a", "--b", "1"], ["python", "x.py"], ["lossprobe", "c"]]
    assert unsupported(["make", "demo"]) and unsupported(["lossprobe", "x", ">", "f"])
    assert unsupported(["lossprobe", "report", "runs"]) is None
    assert problems(Block("p.md", 1, "", "x = 1\n", None))  # no language: neither run nor explained
    assert problems(Block("p.md", 1, "text", "lossprobe surface CKPT\n", None))  # a command shown as text
    assert not problems(Block("p.md", 1, "text", "summary.json  the numbers\n", None))
    assert not problems(Block("p.md", 1, "sh", "make demo\n", "installs everything"))


@pytest.mark.parametrize("case", ["old module path", "failing command"])
def test_runner_fails_on_a_broken_example(case, tmp_path):
    """The runner can fail: an example on an old module path (a deprecation warning is an
    error), and a command that exits non-zero, each named by its page and line; a marked block
    is not run."""
    broken = {"old module path": "```python\nfrom lossprobe.train import fit\n```\n",
              "failing command": "```sh\nlossprobe interpolate a.safetensors b.safetensors --model mlp:2-3-2 "
                                 "--data spiral:test --out runs/ab\n```\n"}[case]
    page = tmp_path / "page.md"
    page.write_text("<!-- no-run: needs a GPU -->\n```python\nraise SystemExit(3)\n```\n\n"
                    "```python\nimport lossprobe as lp\n```\n\n" + broken)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "doc_examples.py"), str(page)], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{page}:2 (python): not run: needs a GPU" in proc.stdout
    assert f"{page}:6: ok" in proc.stdout
    assert f"EXAMPLE FAILED: {page}:10" in proc.stderr
    assert ("LossprobeDeprecationWarning" if case == "old module path" else "a.safetensors does not exist") in proc.stderr


@pytest.mark.parametrize("block", MARKED, ids=[b.name for b in MARKED])
def test_marked_not_to_run(block):
    pytest.skip(f"{block.name} ```{block.lang} not run: {block.no_run}")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    # one torch thread per page (two pages run at once), and tracebacks instead of one-line errors
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", LOSSPROBE_DEBUG="1")
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[k] = "http://127.0.0.1:9"  # offline: nothing may download (data, models)
    return env


class _Runs:
    """The selected pages' runs, each in its own directory, `WORKERS` at a time."""

    def __init__(self, selected: list[str], base):
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopped = False
        self.pool = ThreadPoolExecutor(max_workers=WORKERS)
        key = {p: (ORDER.index(p) if p in ORDER else len(ORDER)) for p in selected}
        self.futures = {p: self.pool.submit(self._run, p, base / p.replace("/", "_")) for p in sorted(selected, key=key.get)}

    def _run(self, page: str, workdir):
        workdir.mkdir(parents=True)
        shutil.copytree(ROOT / "examples", workdir / "examples")  # the pages run from a checkout's root
        log = workdir / "examples.log"
        with open(log, "w") as f, self.lock:
            if self.stopped:
                return "not run", ""
            proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "doc_examples.py"), page, str(PAGE_CPU_LIMIT)],
                                    cwd=workdir, env=_env(), stdout=f, stderr=subprocess.STDOUT)
            self.procs.add(proc)
        try:
            code = proc.wait(timeout=PAGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = f"stopped after {PAGE_TIMEOUT} s of wall-clock time"
        with self.lock:
            self.procs.discard(proc)
        return code, log.read_text()

    def stop(self):
        with self.lock:
            self.stopped = True
            for proc in self.procs:
                proc.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def page_runs(request, tmp_path_factory):
    selected = [item.callspec.params["page"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_examples_run" and hasattr(item, "callspec")]
    runs = _Runs(selected, tmp_path_factory.mktemp("examples"))
    yield runs.futures
    runs.stop()


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page, page_runs):
    code, text = page_runs[page].result()
    if code == -signal.SIGXCPU:
        code = f"killed after {PAGE_CPU_LIMIT} CPU seconds"
    if code != 0:
        running = [line for line in text.splitlines() if line.startswith(("--- ", "$ "))][-2:]
        failed = text[text.rfind("EXAMPLE FAILED"):] if "EXAMPLE FAILED" in text else text[-4000:]
        pytest.fail(f"{page}: an example failed ({code}) at {' / '.join(running)}:\n{failed[-8000:]}", pytrace=False)
