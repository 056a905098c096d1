"""Turn on etcd authentication for modelmux, idempotently (run by the Job ``modelmux-etcd-auth``).

etcd has no flag that starts it with authentication on: users, roles and ``auth enable`` are API
calls. This script makes them, each one safe to repeat, so the Job can run on every ``kubectl
apply`` (and after a password rotation):

1. user ``root`` with the root role (etcd refuses ``auth enable`` without it);
2. role ``modelmux`` with read-write on the keys modelmux writes (``<prefix>/...``)
   and nothing else;
3. user ``modelmux`` holding that role; an existing user gets the password from the Secret (rotation);
4. ``auth enable``.

Once on, the script authenticates as root for every later run. It needs only the packages of the
modelmux image (grpcio and aetcd's generated etcd API). Settings, from the environment:

``ETCD_ENDPOINT`` (host:port), ``ETCD_CA_FILE`` (TLS when set), ``ETCD_CERT_FILE`` /
``ETCD_KEY_FILE`` (client certificate, when etcd asks for one), ``ETCD_ROOT_PASSWORD_FILE``,
``ETCD_USER`` (default ``modelmux``), ``ETCD_PASSWORD_FILE`` (that user's password),
``ETCD_PREFIX`` (default ``/modelmux``), ``ETCD_TIMEOUT_S`` (default 10).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc

READWRITE = 2  # authpb.Permission.Type


def _read(env: str) -> str:
    path = os.environ.get(env, "")
    if not path:
        raise SystemExit(f"{env} is not set")
    text = Path(path).read_text().strip()
    if not text:
        raise SystemExit(f"{env}: {path} is empty")
    return text


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """etcd's range for every key under ``prefix/`` (modelmux's keys are ``<prefix>/...``):
    [prefix/, prefix0), so a sibling such as ``/modelmux2`` stays out of reach."""
    key = prefix.rstrip("/").encode() + b"/"
    if key == b"/":
        raise SystemExit("ETCD_PREFIX must not be empty or / (the modelmux user would get every key)")
    end = bytearray(key)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        raise SystemExit(f"ETCD_PREFIX {prefix!r} has no upper bound")
    end[-1] += 1
    return key, bytes(end)


def _channel() -> grpc.Channel:
    endpoint = os.environ.get("ETCD_ENDPOINT", "modelmux-etcd:2379")
    ca = os.environ.get("ETCD_CA_FILE", "")
    if not ca:
        return grpc.insecure_channel(endpoint)
    cert, key = os.environ.get("ETCD_CERT_FILE", ""), os.environ.get("ETCD_KEY_FILE", "")
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )
    return grpc.secure_channel(endpoint, creds)


def _ignore_exists(call: Callable[[], Any]) -> bool:
    """Run ``call``; True when it did something, False when etcd says it already exists."""
    try:
        call()
        return True
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "already exists" in (exc.details() or ""):
            return False
        raise


def bootstrap() -> str:
    """Do the steps above; returns a one-line summary."""
    timeout = float(os.environ.get("ETCD_TIMEOUT_S", "10"))
    root_password = _read("ETCD_ROOT_PASSWORD_FILE")
    user = os.environ.get("ETCD_USER", "modelmux")
    password = _read("ETCD_PASSWORD_FILE")
    key, range_end = prefix_range(os.environ.get("ETCD_PREFIX", "/modelmux"))
    if user == "root":
        raise SystemExit("ETCD_USER must not be root")
    channel = _channel()
    auth = rpc.AuthStub(channel)
    deadline = time.monotonic() + float(os.environ.get("ETCD_WAIT_S", "120"))
    metadata: tuple[tuple[str, str], ...] = ()
    while True:  # etcd may still be starting: retry until it answers (bounded)
        try:
            token = auth.Authenticate(rpc.AuthenticateRequest(name="root", password=root_password), timeout=timeout).token
            metadata = (("token", token),)
            enabled = True
            break
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "not enabled" in (exc.details() or ""):
                enabled = False
                break
            if exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                time.sleep(2)  # polling etcd under a deadline
                continue
            raise

    def call(method: Callable[..., Any], request: Any) -> Any:
        return method(request, timeout=timeout, metadata=metadata)

    done = []
    if not enabled:
        if _ignore_exists(lambda: call(auth.UserAdd, rpc.AuthUserAddRequest(name="root", password=root_password))):
            done.append("user root")
        _ignore_exists(lambda: call(auth.RoleAdd, rpc.AuthRoleAddRequest(name="root")))
        call(auth.UserGrantRole, rpc.AuthUserGrantRoleRequest(user="root", role="root"))
    if _ignore_exists(lambda: call(auth.RoleAdd, rpc.AuthRoleAddRequest(name=user))):
        done.append(f"role {user}")
    perm = rpc.Permission(permType=READWRITE, key=key, range_end=range_end)
    call(auth.RoleGrantPermission, rpc.AuthRoleGrantPermissionRequest(name=user, perm=perm))
    if _ignore_exists(lambda: call(auth.UserAdd, rpc.AuthUserAddRequest(name=user, password=password))):
        done.append(f"user {user}")
    else:
        call(auth.UserChangePassword, rpc.AuthUserChangePasswordRequest(name=user, password=password))
    call(auth.UserGrantRole, rpc.AuthUserGrantRoleRequest(user=user, role=user))
    if not enabled:
        call(auth.AuthEnable, rpc.AuthEnableRequest())
        done.append("auth enabled")
    channel.close()
    return f"etcd auth: {', '.join(done) or 'already set up'}; {user} may read and write {key.decode()}*"


if __name__ == "__main__":
    print(bootstrap(), flush=True)
    sys.exit(0)
