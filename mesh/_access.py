"""Tenant scoping in one place: what a principal may see and change.

Every management and data-plane call takes the caller's :class:`~mesh._auth.Principal` and asks
here. The rules:

* A model, vModel or tenant outside the caller's tenant does not exist for it: NOT_FOUND with the
  same message a missing one gets (existence is not leaked).
* Inside its tenant a caller needs the role for the action (``reader`` infers and reads; ``tenant``
  also manages): PERMISSION_DENIED otherwise.
* A registration's tenant is the caller's tenant, never a field the caller writes; only an admin
  may register for another tenant. ``pinned``, ``min_copies`` above the self-service limit and
  tenant quotas are admin-only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TypeVar

from ._auth import Action, Principal
from ._errors import ModelNotFound, PermissionDenied, TenantNotFound, VModelNotFound
from ._store_schema import ModelRecord

T = TypeVar("T")

SELF_SERVICE_MIN_COPIES = 1
"""``min_copies`` a tenant may ask for itself; more is an admin's decision (it holds capacity)."""


def model_not_found(model_id: str) -> ModelNotFound:
    return ModelNotFound(f"model '{model_id}' is not registered")


def require_model(principal: Principal, model_id: str, tenant: str | None, action: Action) -> None:
    """``tenant`` None: no such model. NOT_FOUND unless the caller sees it; then the role check."""
    if tenant is None or not principal.sees(tenant):
        raise model_not_found(model_id)
    principal.require(action, f"model '{model_id}'")


def require_vmodel(principal: Principal, name: str, tenant: str | None, action: Action) -> None:
    if tenant is None or not principal.sees(tenant):
        raise VModelNotFound(f"vmodel '{name}' does not exist")
    principal.require(action, f"vmodel '{name}'")


def require_tenant(principal: Principal, tenant: str, action: Action) -> None:
    if not principal.sees(tenant):
        raise TenantNotFound(f"tenant '{tenant}' has no quota and no models")
    principal.require(action, f"tenant '{tenant}'")


def scope_registration(principal: Principal, record: ModelRecord, *, self_service_min_copies: int = SELF_SERVICE_MIN_COPIES) -> ModelRecord:
    """The record as this caller may register it: its own tenant's, within its rights."""
    principal.require(Action.MANAGE, f"model '{record.model_id}'")
    if principal.tenant is None:
        return record  # admin: the tenant it names (or none)
    if record.tenant and record.tenant != principal.tenant:
        raise PermissionDenied(
            f"principal '{principal.name}' may register models for tenant '{principal.tenant}' only, not '{record.tenant}'"
        )
    if record.pinned:
        raise PermissionDenied(f"model '{record.model_id}': 'pinned' holds capacity for good and is for admins only")
    if record.min_copies > self_service_min_copies:
        raise PermissionDenied(
            f"model '{record.model_id}': min_copies above {self_service_min_copies} is for admins only (asked {record.min_copies})"
        )
    return replace(record, tenant=principal.tenant)


def visible(principal: Principal, items: Iterable[T], tenant_of: Callable[[T], str]) -> list[T]:
    """The items of the caller's tenant (all for an admin)."""
    if principal.tenant is None:
        return list(items)
    return [x for x in items if tenant_of(x) == principal.tenant]
