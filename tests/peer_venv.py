"""MLServer's own venv (``var/mlserver-venv``, git-ignored), shared by the MLServer runtime test and
``bench/bench_peer.py``: MLServer and its runtimes come from PyPI and never share the project's venv.

``make test`` builds it before the suite runs (``python -m tests.peer_venv``), so that the
download and install count against no test's timeout; a test that finds it missing builds it then.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parents[1] / "var" / "mlserver-venv"
# uvloop 0.22 made MLServer 1.7.1's inference workers die at start (asyncio.get_event_loop() in a
# process with no loop raises): its default parallel_workers=1 then serves nothing
PACKAGES = ("mlserver", "mlserver-sklearn", "mlserver-xgboost", "uvloop<0.22")
PROBE = "import mlserver, mlserver_sklearn, mlserver_xgboost, sklearn, joblib"


def ready() -> bool:
    py = VENV / "bin" / "python"
    return py.exists() and subprocess.run([str(py), "-c", PROBE], capture_output=True, check=False).returncode == 0


def ensure(timeout_s: float = 900) -> Path:
    """The venv's python, the venv made and MLServer installed first when needed (raises
    CalledProcessError / TimeoutExpired when pip cannot)."""
    if not ready():
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *PACKAGES], check=True, capture_output=True, timeout=timeout_s)
    return VENV / "bin" / "python"


if __name__ == "__main__":
    try:
        print(f"MLServer venv ready: {ensure()}")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        # not fatal here: the tests that need it skip with pip's reason
        print(f"could not build the MLServer venv: {exc}", file=sys.stderr)
