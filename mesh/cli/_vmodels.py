"""``modelmux vmodel split|promote|rollback``: canary and shadow traffic on a vModel.

``split NAME --target stable=90 --target candidate=10 [--shadow mirror=5]`` sets weighted
targets (whole percents summing to 100; the first is the stable model, the last the candidate)
and an optional shadow that receives a copy of that percentage of requests (answers discarded).
``promote NAME`` sends everything to the candidate, ``rollback NAME`` back to the stable model;
both end the split. REST: ``/api/v1/vmodels/{name}/split``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._client import AddressOpt, check, client
from ._output import DocOutput, OutputOpt, emit_doc

vmodel_app = typer.Typer(help="Traffic split on a vModel: weighted targets, shadow, promote, rollback.", no_args_is_help=True)


def _pair(text: str, what: str) -> tuple[str, int]:
    model, sep, pct = text.rpartition("=")
    if not sep or not model or not pct.strip().isdigit():
        raise typer.BadParameter(f"{what} must be MODEL=PERCENT, got {text!r}")
    return model, int(pct)


@vmodel_app.command("split")
def split(
    name: str,
    target: Annotated[list[str], typer.Option("--target", "-t", help="MODEL=PERCENT, repeated (first: stable, last: candidate)")],
    shadow: Annotated[str, typer.Option("--shadow", help="MODEL=PERCENT: mirror that share of requests to MODEL")] = "",
    owner: Annotated[str, typer.Option(help="owner of the vModel")] = "",
    address: AddressOpt = None,
    output: OutputOpt = DocOutput.json,
) -> None:
    """Set weighted targets (and a shadow) on a vModel; creates it when it does not exist."""
    body: dict[str, Any] = {"targets": [{"model_id": m, "weight": w} for m, w in (_pair(t, "--target") for t in target)]}
    if shadow:
        m, pct = _pair(shadow, "--shadow")
        body["shadow"] = {"model_id": m, "percent": pct}
    if owner:
        body["owner"] = owner
    with client(address) as c:
        emit_doc(check(c.put(f"/api/v1/vmodels/{name}/split", json=body)), output)


@vmodel_app.command("promote")
def promote(
    name: str,
    model: Annotated[str, typer.Option(help="the target to promote (default: the candidate, the last target)")] = "",
    address: AddressOpt = None,
    output: OutputOpt = DocOutput.json,
) -> None:
    """All traffic to the candidate; the split and shadow end."""
    with client(address) as c:
        emit_doc(check(c.post(f"/api/v1/vmodels/{name}/split/promote", params={"model": model} if model else None)), output)


@vmodel_app.command("rollback")
def rollback(name: str, address: AddressOpt = None, output: OutputOpt = DocOutput.json) -> None:
    """All traffic back to the stable model (the first target); the split and shadow end."""
    with client(address) as c:
        emit_doc(check(c.post(f"/api/v1/vmodels/{name}/split/rollback")), output)
