"""The controller's CLI commands: registered on the ``modelmux`` app through the ``modelmux.cli``
entry point (mesh never imports the controller), and ``python -m controller``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from controller import register_commands

ROOT = Path(__file__).resolve().parents[2]
memory_only = pytest.mark.parametrize("cluster_kind", ["memory"])


def _app() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command()
    def other() -> None:  # a second command, so typer keeps subcommands by name
        """Stand-in for mesh's own commands."""

    register_commands(app)
    return app


def _predictor(name: str) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor", "metadata": {"name": name},
            "spec": {"modelType": {"name": "onnx"}, "path": "s3://models/a.onnx"}}


def test_register_commands_adds_controller_and_apply() -> None:
    app = _app()
    assert {c.name for c in app.registered_commands} == {None, "controller", "apply"}  # None: `other`, named by typer
    out = CliRunner().invoke(app, ["apply", "--help"])
    assert out.exit_code == 0 and "--filename" in out.output and "--delete" in out.output


def test_pyproject_declares_the_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    group = project["entry-points"]["modelmux.cli"]
    ep = metadata.EntryPoint(name="controller", value=group["controller"], group="modelmux.cli")
    assert ep.load() is register_commands
    assert any(p.startswith("controller") for p in
               tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"])


def test_installed_modelmux_cli_finds_the_controller_commands() -> None:
    """Through the installed distribution's metadata, as ``modelmux`` runs (needs ``pip install -e .``)."""
    found = {ep.name: ep for ep in metadata.entry_points(group="modelmux.cli")}
    assert "controller" in found, "reinstall modelmux (pip install -e .) so its entry points are registered"
    assert found["controller"].load() is register_commands
    from mesh.cli import app

    assert {"controller", "apply"} <= {c.name for c in app.registered_commands}


@memory_only
async def test_apply_command_registers_and_deletes(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(1)
    f = tmp_path / "p.yaml"
    f.write_text(json.dumps(_predictor("cli-model")))
    app = _app()
    out = await asyncio.to_thread(CliRunner().invoke, app, ["apply", "-f", str(f), "--no-load-now", "-a", cluster.rest[0]])
    assert out.exit_code == 0, out.output
    assert "predictor/cli-model created" in out.output
    async with httpx.AsyncClient(base_url=cluster.rest[0]) as client:
        st = (await client.get("/v1/vmodels/cli-model")).json()
        assert st["status"] == "DEFINED" and st["owner"] == "ksp/default", st
        assert st["targetModelId"] in out.output
    # the address from the environment, as the other modelmux commands read it
    env = {"MODELMUX_ADDRESS": cluster.rest[0]}
    out = await asyncio.to_thread(CliRunner().invoke, app, ["apply", "-f", str(f), "--delete"], env=env)
    assert out.exit_code == 0, out.output
    assert "predictor/cli-model deleted" in out.output
    async with httpx.AsyncClient(base_url=cluster.rest[0]) as client:
        assert (await client.get("/v1/vmodels/cli-model")).json()["status"] == "NOT_FOUND"


@memory_only
async def test_apply_command_fails_on_a_bad_document_and_an_unreachable_mesh(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**_predictor("broken"), "spec": {"modelType": {"name": "onnx"}}}))
    app = _app()
    out = await asyncio.to_thread(CliRunner().invoke, app, ["apply", "-f", str(bad), "-a", cluster.rest[0]])
    assert out.exit_code == 1 and "predictor/broken" in out.output and "storage is missing" in out.output, out.output
    async with httpx.AsyncClient(base_url=cluster.rest[0]) as client:
        assert (await client.get("/v1/vmodels/broken")).json()["status"] == "NOT_FOUND"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(_predictor("fine")))
    out = await asyncio.to_thread(CliRunner().invoke, app, ["apply", "-f", str(good), "-a", f"127.0.0.1:{port}"])
    assert out.exit_code == 1 and "error" in out.output and "cannot reach" in out.output, out.output


def test_python_m_controller_runs_the_controller_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "controller", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "--log-level" in out.stdout and "Kubernetes controller" in out.stdout
