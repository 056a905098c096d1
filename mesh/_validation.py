"""What a client may name and size things: ids of models, vModels and tenants, byte quantities."""

from __future__ import annotations

import re

from ._errors import InvalidRequest

# bounds on numbers a client sets, so that no later float or int64 conversion (placement, etcd) overflows
MAX_BYTES = 1 << 62
MAX_COPIES = 1 << 16
MAX_RPS = 1e9  # a tenant's rate, requests per second
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=\-]{0,252}$")


_BYTES_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]i?|k)?B?\s*$")
_UNITS = {"": 1, "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5, "E": 1000**6,
          "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}


def parse_bytes(value: int | str, what: str = "size") -> int:
    """Bytes from an int or a Kubernetes-style quantity: ``1048576``, ``512Mi``, ``8Gi``, ``2GiB``, ``1.5G``."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{what}: expected a number of bytes, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _BYTES_RE.match(value)
        if m is not None:
            number, unit = m.group(1), _UNITS[m.group(2) or ""]
            # exact for integers (a float would turn a long one into infinity)
            n = int(number) * unit if "." not in number else int(float(number) * unit)
            if n > MAX_BYTES:
                raise InvalidRequest(f"{what}: {value!r} is more than {MAX_BYTES} bytes")
            return n
    raise InvalidRequest(f"{what}: expected bytes as an integer or a quantity like 512Mi or 8Gi, got {value!r}")


def parse_rate(value: object, what: str = "rate") -> float:
    """Requests per second: a finite number from 0 (no limit) to :data:`MAX_RPS`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_RPS:
        raise InvalidRequest(f"{what}: expected requests per second from 0 (no limit) to {MAX_RPS:g}, got {value!r}")
    return float(value)


def valid_id(value: str) -> bool:
    """Whether ``value`` can name a model, vModel or tenant."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def validate_id(kind: str, value: str) -> str:
    if not valid_id(value):
        raise InvalidRequest(
            f"invalid {kind} '{value}': 1-253 characters, letters, digits and . _ : @ + = - "
            "(starting with a letter or digit)"
        )
    return value
