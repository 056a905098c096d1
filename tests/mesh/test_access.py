"""Tenant scoping rules (pure): NOT_FOUND outside the tenant, roles inside it, registrations."""

from __future__ import annotations

import pytest

from mesh._access import require_model, require_tenant, scope_registration, visible
from mesh._auth import LOCAL_ADMIN, Action, Principal, Role
from mesh._errors import ModelNotFound, PermissionDenied, TenantNotFound, status_for
from mesh._store_schema import ModelRecord

A = Principal("a", Role.TENANT, "team-a")
A_READER = Principal("a-r", Role.READER, "team-a")


def test_another_tenants_model_is_not_found_exactly_like_a_missing_one() -> None:
    with pytest.raises(ModelNotFound) as other:
        require_model(A, "m", "team-b", Action.INFER)
    with pytest.raises(ModelNotFound) as missing:
        require_model(A, "m", None, Action.INFER)
    assert str(other.value) == str(missing.value)
    assert status_for(other.value)[0].http == 404
    require_model(A, "m", "team-a", Action.MANAGE)
    require_model(LOCAL_ADMIN, "m", "team-b", Action.ADMIN)


def test_roles_inside_the_tenant() -> None:
    require_model(A_READER, "m", "team-a", Action.INFER)
    with pytest.raises(PermissionDenied) as err:
        require_model(A_READER, "m", "team-a", Action.MANAGE)
    assert status_for(err.value)[0].http == 403
    with pytest.raises(PermissionDenied):
        require_tenant(A, "team-a", Action.ADMIN)  # quotas are an admin's
    with pytest.raises(TenantNotFound):
        require_tenant(A, "team-b", Action.READ)


def test_registration_takes_the_callers_tenant() -> None:
    rec = ModelRecord(model_id="m", model_type="onnx")
    assert scope_registration(A, rec).tenant == "team-a"
    assert scope_registration(A, ModelRecord(model_id="m", model_type="onnx", tenant="team-a")).tenant == "team-a"
    with pytest.raises(PermissionDenied, match="tenant 'team-a' only"):
        scope_registration(A, ModelRecord(model_id="m", model_type="onnx", tenant="team-b"))
    with pytest.raises(PermissionDenied, match="pinned"):
        scope_registration(A, ModelRecord(model_id="m", model_type="onnx", pinned=True))
    with pytest.raises(PermissionDenied, match="min_copies"):
        scope_registration(A, ModelRecord(model_id="m", model_type="onnx", min_copies=3))
    with pytest.raises(PermissionDenied, match="may not manage"):
        scope_registration(A_READER, rec)
    admin_rec = ModelRecord(model_id="m", model_type="onnx", tenant="team-b", pinned=True, min_copies=3)
    assert scope_registration(LOCAL_ADMIN, admin_rec) == admin_rec


def test_lists_show_the_callers_tenant_only() -> None:
    recs = [ModelRecord(model_id=f"m{k}", model_type="onnx", tenant=t) for k, t in enumerate(["team-a", "team-b", "team-a", ""])]
    assert [r.model_id for r in visible(A, recs, lambda r: r.tenant)] == ["m0", "m2"]
    assert len(visible(LOCAL_ADMIN, recs, lambda r: r.tenant)) == 4
