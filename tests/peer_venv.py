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


# ONNX on MLServer: it ships no ONNX runtime of its own; its MLflow runtime serves an MLflow model of
# the ONNX flavour (onnxruntime inside). Only bench/bench_peer.py --model onnx uses it (not make test):
# MLflow and its dependencies are a large install.
ONNX_VENV = VENV.parent / "mlserver-onnx-venv"
ONNX_PACKAGES = ("mlserver==1.7.1", "mlserver-mlflow==1.7.1", "onnx", "onnxruntime", "uvloop<0.22")
ONNX_PROBE = "import mlserver, mlserver_mlflow, mlflow.onnx, onnx, onnxruntime"


def ready(venv: Path = VENV, probe: str = PROBE) -> bool:
    py = venv / "bin" / "python"
    return py.exists() and subprocess.run([str(py), "-c", probe], capture_output=True, check=False).returncode == 0


def ensure(timeout_s: float = 900, *, venv: Path = VENV, packages: tuple[str, ...] = PACKAGES, probe: str = PROBE) -> Path:
    """The venv's python, the venv made and MLServer installed first when needed (raises
    CalledProcessError / TimeoutExpired when pip cannot)."""
    if not ready(venv, probe):
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True, capture_output=True, timeout=timeout_s)
    return venv / "bin" / "python"


def ensure_onnx(timeout_s: float = 900) -> Path:
    """The python of MLServer's venv for ONNX (its MLflow runtime), made on first use."""
    return ensure(timeout_s, venv=ONNX_VENV, packages=ONNX_PACKAGES, probe=ONNX_PROBE)


if __name__ == "__main__":
    try:
        print(f"MLServer venv ready: {ensure()}")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        # not fatal here: the tests that need it skip with pip's reason
        print(f"could not build the MLServer venv: {exc}", file=sys.stderr)
