"""The ``modelmux`` command line (typer + rich): one module per group of commands, wired here.

===================  ============================================================
``_serve``           serve, up, demo (commands that run servers)
``_models``          register, unregister, infer
``_inspect``         get models|vmodels|vmodel|instances, describe model, logs, top
``_tenants``         tenant set|get|list|delete
``_k8s``             controller, apply
``_client``          the REST address, the HTTP client, errors as exit code 1
``_output``          stdout / stderr, ``-o table|plain|wide|json|yaml``, tables
``_render``          the columns of each table; describe and top renderings
===================  ============================================================

The entry point configures logging (for the commands that run servers); nothing else does.
"""

from __future__ import annotations

import contextlib

import typer

from . import _inspect, _k8s, _models, _serve, _tenants

__all__ = ["app", "main"]

app = typer.Typer(help="modelmux: serve thousands of models from a small pool of instances.", no_args_is_help=True)
app.add_typer(_serve.app)
app.add_typer(_models.app)
app.add_typer(_inspect.app)
app.add_typer(_k8s.app)
app.add_typer(_inspect.get_app, name="get")
app.add_typer(_inspect.describe_app, name="describe")
app.add_typer(_tenants.tenant_app, name="tenant")


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        app()
