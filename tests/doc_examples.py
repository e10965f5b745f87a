"""The fenced code blocks of README.md and docs/*.md, and a runner that runs one page's blocks.

Every block is an example that runs as written, by its language:

    python        executed in order, in one namespace per page (as a reader types them into one session)
    sh, bash      each command run: ``lossprobe ARGS`` as ``python -m lossprobe ARGS`` (the same module
                  run by runpy, in the page's interpreter, so a page pays Python's start-up once),
                  ``python FILE ARGS`` / ``python -m MODULE ARGS`` likewise; ``#`` comments, ``\\``
                  continuations and ``&&`` are understood, anything else (pipes, redirections, other
                  programs) is refused: such a block must be marked not to run
    toml          parsed (a search space, with a ``[params]`` table, also loaded by `load_space`)
    text          output, file listings: nothing to run (a command in one is refused)

except the blocks marked in the Markdown, on the line before the opening fence, with

    <!-- no-run: why it cannot run here (needs a GPU, hours of training, a file you bring) -->

which tests/test_examples.py reports as skipped with that reason. Blocks run from a fresh
directory that holds a copy of the repository's examples/ (the pages' commands are written
from a checkout's root), with deprecated lossprobe names (old module paths) as errors.

    python tests/doc_examples.py PAGE [CPU_SECONDS]   # run PAGE's blocks in the current directory
"""

from __future__ import annotations

import re
import shlex
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_LANGS = {"python", "sh", "bash", "toml"}
SHOWN_LANGS = {"text"}
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(?P<reason>.+?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)\s*$")


@dataclass
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    no_run: str | None  # the reason given in the marker

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[str]:
    """README.md and the guides, as paths relative to the repository root."""
    docs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))
    return ["README.md", *docs]


def blocks(page: str) -> list[Block]:
    lines = (ROOT / page).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent, fence = i, len(m["indent"]), m["fence"]
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{re.escape(fence)}\s*$", lines[i]):
            line = lines[i]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())  # the fence's indentation
            i += 1
        i += 1
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NO_RUN.match(before)
        out.append(Block(page, start + 1, m["lang"].lower(), "\n".join(body) + "\n", marker["reason"] if marker else None))
    return out


def commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuations joined, comments dropped, ``&&`` split."""
    out = []
    for logical in re.sub(r"\\\n", " ", code).splitlines():
        words = shlex.split(logical, comments=True)
        cmd: list[str] = []
        for w in words + ["&&"]:
            if w == "&&":
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


def unsupported(cmd: list[str]) -> str | None:
    """Why the runner cannot run a command as written, or None."""
    if cmd[0] not in ("lossprobe", "python", "python3"):
        return f"'{cmd[0]}' is not a lossprobe or python command"
    bad = [w for w in cmd if w in ("|", ">", ">>", "<", ";", "&", "||")]
    if bad:
        return f"shell syntax {bad[0]!r} is not supported"
    if cmd[0] != "lossprobe" and len(cmd) < 2:
        return "an interactive python session"
    return None


def problems(block: Block) -> list[str]:
    """What makes a block impossible to run or to classify (checked without running anything)."""
    if block.no_run:
        return []
    if block.lang not in RUN_LANGS | SHOWN_LANGS:
        return [f"{block.name}: a ```{block.lang or ''} block: give it a language that runs (python, sh, toml), "
                f"text for output, or mark it <!-- no-run: reason -->"]
    if block.lang in SHOWN_LANGS:
        cmds = [line for line in block.code.splitlines() if re.match(r"^\s*(\$ )?(lossprobe|python3?)\s", line)]
        return [f"{block.name}: a text block with a command ({cmds[0].strip()!r}): make it sh, or mark it no-run"] if cmds else []
    if block.lang in ("sh", "bash"):
        return [f"{block.name}: {' '.join(c)}: {why}" for c in commands(block.code) if (why := unsupported(c))]
    return []


# ---- the runner (in the page's own interpreter, from its working directory) -------------------

def _run_argv(argv: list[str]) -> None:
    import runpy

    saved = sys.argv
    try:
        if argv[0] == "lossprobe":
            sys.argv = ["lossprobe", *argv[1:]]
            runpy.run_module("lossprobe", run_name="__main__", alter_sys=True)
        elif argv[1] == "-m":
            sys.argv = [argv[2], *argv[3:]]
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv[1:]
            runpy.run_path(argv[1], run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"exit status {e.code}") from None
    finally:
        sys.argv = saved


def run_page(page: str) -> int:
    import time
    import tomllib
    import warnings

    try:
        from lossprobe.errors import LossprobeDeprecationWarning
    except ImportError:  # where lossprobe._moved defines it
        from lossprobe._moved import LossprobeDeprecationWarning

    # an example that uses an old module path or a deprecated name or keyword fails
    warnings.simplefilter("error", LossprobeDeprecationWarning)
    warnings.filterwarnings("error", message=r".*(lossprobe\.|trajectory\.|PlaneSurface)", category=DeprecationWarning)
    namespace = {"__name__": "__main__"}
    for block in blocks(page):
        if block.no_run or block.lang in SHOWN_LANGS:
            print(f"--- {block.name} ({block.lang}): {'not run: ' + block.no_run if block.no_run else 'shown, not run'}",
                  flush=True)
            continue
        if problems(block):
            print("\n".join(problems(block)), file=sys.stderr)
            return 1
        t0, c0 = time.perf_counter(), time.process_time()
        print(f"--- {block.name} ({block.lang})", flush=True)
        try:
            if block.lang == "python":
                exec(compile(block.code, block.name, "exec"), namespace)
            elif block.lang == "toml":
                doc = tomllib.loads(block.code)
                if "params" in doc:
                    from lossprobe.search.space import load_space

                    Path("_space.toml").write_text(block.code)
                    load_space("_space.toml")
            else:
                for cmd in commands(block.code):
                    print(f"$ {shlex.join(cmd)}", flush=True)
                    t1, c1 = time.perf_counter(), time.process_time()
                    try:
                        _run_argv(cmd)
                    except Exception as e:
                        raise RuntimeError(f"command '{shlex.join(cmd)}' failed: {e}") from e
                    print(f"--- {block.name}: {shlex.join(cmd[:3])} ... ok in {time.perf_counter() - t1:.1f} s "
                          f"({time.process_time() - c1:.1f} s CPU)", flush=True)
        except BaseException:
            sys.stdout.flush()
            print(f"\nEXAMPLE FAILED: {block.name} (```{block.lang} block)\n{block.code}", file=sys.stderr)
            traceback.print_exc()
            return 1
        print(f"--- {block.name}: ok in {time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU)", flush=True)
    return 0


if __name__ == "__main__":
    import resource

    # a runaway example stops here whatever the machine's load (a hang is the caller's wall-clock limit)
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else resource.RLIM_INFINITY
    resource.setrlimit(resource.RLIMIT_CPU, (limit, limit if limit == resource.RLIM_INFINITY else limit + 10))  # SIGXCPU first
    sys.exit(run_page(sys.argv[1]))
