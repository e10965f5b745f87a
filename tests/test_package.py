import subprocess
import sys


def test_public_api_and_lazy_heavy_modules():
    code = (
        "import sys, lossprobe as lp\n"
        "assert 'optuna' not in sys.modules and 'sklearn' not in sys.modules\n"
        "for name in ('interpolate', 'surface', 'slice', 'align', 'hessian', 'sharpness', 'directions', 'toy', 'fit'):\n"
        "    assert hasattr(lp, name), name\n"
        "assert callable(lp.report.site.build_site)\n"
        "import lossprobe.search.loop\n"
        "assert lp.search.loop.probe_search\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
