"""Commands of other packages join ``modelmux`` through the ``modelmux.cli`` entry-point group."""

from __future__ import annotations

import logging
from importlib import metadata

import pytest
import typer
from typer.testing import CliRunner

from mesh.cli import PLUGIN_GROUP, add_plugin_commands


def add_hello(app: typer.Typer) -> None:
    @app.command("hello")
    def hello(name: str = "mesh") -> None:
        typer.echo(f"hello {name}")


def _app() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command()
    def own() -> None:
        """A command of the app itself."""

    return app


def test_entry_points_add_their_commands() -> None:
    app = _app()
    ep = metadata.EntryPoint(name="hello", value=f"{__name__}:add_hello", group=PLUGIN_GROUP)
    add_plugin_commands(app, [ep])
    out = CliRunner().invoke(app, ["hello", "--name", "you"])
    assert out.exit_code == 0 and out.output == "hello you\n"


def test_a_broken_entry_point_is_reported_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    app = _app()
    broken = metadata.EntryPoint(name="broken", value="tests.mesh.no_such_module:register", group=PLUGIN_GROUP)
    good = metadata.EntryPoint(name="hello", value=f"{__name__}:add_hello", group=PLUGIN_GROUP)
    with caplog.at_level(logging.WARNING, logger="mesh.cli"):
        add_plugin_commands(app, [broken, good])
    assert "broken" in caplog.text and "no_such_module" in caplog.text
    assert {c.name for c in app.registered_commands} == {None, "hello"}  # `own` (named by typer) and hello
    assert CliRunner().invoke(app, ["own"]).exit_code == 0
