"""The ``modelmux`` command line (typer + rich): one module per group of commands, wired here.

===================  ============================================================
``_serve``           serve, up, demo (commands that run servers)
``_models``          register, unregister, infer
``_inspect``         get models|vmodels|vmodel|instances, describe model, logs, top
``_tenants``         tenant set|get|list|delete
``_store``           store export|import (registrations as YAML, any store)
``_vmodels``         vmodel split|promote|rollback (canary and shadow traffic)
``_client``          the REST address, the HTTP client, errors as exit code 1
``_output``          stdout / stderr, ``-o table|plain|wide|json|yaml``, tables
``_render``          the columns of each table; describe and top renderings
===================  ============================================================

Other packages add commands through the ``modelmux.cli`` entry-point group (the controller
package adds ``controller`` and ``apply``); mesh never imports them.

The entry point configures logging (for the commands that run servers); nothing else does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from importlib import metadata

import typer

from . import _inspect, _models, _serve, _store, _tenants, _vmodels

__all__ = ["PLUGIN_GROUP", "add_plugin_commands", "app", "main"]

app = typer.Typer(help="modelmux: serve thousands of models from a small pool of instances.", no_args_is_help=True)
app.add_typer(_serve.app)
app.add_typer(_models.app)
app.add_typer(_inspect.app)
app.add_typer(_inspect.get_app, name="get")
app.add_typer(_inspect.describe_app, name="describe")
app.add_typer(_tenants.tenant_app, name="tenant")
app.add_typer(_store.store_app, name="store")
app.add_typer(_vmodels.vmodel_app, name="vmodel")


PLUGIN_GROUP = "modelmux.cli"


def add_plugin_commands(target: typer.Typer, found: Iterable[metadata.EntryPoint] | None = None) -> None:
    """Let installed packages add commands: each entry point of the ``modelmux.cli`` group is a
    function called with the app. A plugin that fails to load is reported and skipped."""
    for ep in metadata.entry_points(group=PLUGIN_GROUP) if found is None else found:
        try:
            ep.load()(target)
        except Exception as exc:
            logging.getLogger(__name__).warning("commands from %s (%s) not loaded: %s", ep.name, ep.value, exc)


add_plugin_commands(app)


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        app()
