"""Run lossprobe commands on real small or read-only file systems (tmpfs mounts) in a private
mount namespace, for tests/test_faults.py.

    unshare --mount --propagation private python tests/mounted.py PLAN.json RESULT.json

PLAN.json is a list of steps, done in order:

    {"mount": DIR, "size": "64k"}         a tmpfs of that size on DIR (created if missing)
    {"remount": DIR, "options": "ro"}     mount -o remount,OPTIONS (e.g. "ro", "rw,size=64m")
    {"mkdir": DIR}                        a folder (on a mount before it is made read-only)
    {"run": [ARGS...]}                    `lossprobe ARGS...` in this process: {"rc", "err"} (an
                                          exception that escapes: rc 1 and its traceback in err)
    {"copy": [SRC, DST]}                  copy SRC (on a mount) to DST (outside), temporary files
                                          included, so the test can inspect what was left there

RESULT.json (outside the mounts) gets the list of the "run" steps' results. The mounts belong to
this process's namespace: they vanish when it exits, however it exits, and nobody else sees them.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import traceback
from pathlib import Path


def mount(*args: str) -> None:
    p = subprocess.run(["mount", *args], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"mount {' '.join(args)}: {p.stderr.strip() or p.returncode}")


def main(plan_file: str, result_file: str) -> None:
    import torch

    torch.set_num_threads(1)
    from lossprobe.cli import main as lossprobe

    results = []
    for step in json.loads(Path(plan_file).read_text()):
        if "mount" in step:
            Path(step["mount"]).mkdir(parents=True, exist_ok=True)
            mount("-t", "tmpfs", "-o", f"size={step['size']},mode=0755", "tmpfs", step["mount"])
        elif "remount" in step:
            mount("-o", f"remount,{step['options']}", step["remount"])
        elif "mkdir" in step:
            Path(step["mkdir"]).mkdir(parents=True)
        elif "run" in step:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = lossprobe(step["run"])
                except Exception:  # what `python -m lossprobe` would do: a traceback, exit status 1
                    traceback.print_exc()
                    rc = 1
            results.append({"rc": rc, "err": err.getvalue()})
        elif "copy" in step:
            src, dst = step["copy"]
            shutil.copytree(src, dst) if Path(src).exists() else Path(dst).mkdir(parents=True)
        else:
            raise SystemExit(f"unknown step {step}")
    Path(result_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
