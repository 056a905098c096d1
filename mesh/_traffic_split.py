"""Weighted targets and a shadow for a vModel: which model serves one request (pure).

A vModel normally points at one model. With a split it has weighted targets (e.g. the stable
model 90, the canary 10, weights summing to 100) and optionally a shadow model that receives a
copy of ``shadow_percent`` of the requests; the shadow's answers are discarded (and counted),
never returned and never awaited by the caller.

A request that carries a session header (``mm-session``) is sticky: the same session always lands
on the same target (a stable hash of vModel and session), so one user's requests do not flip
between versions; without one the choice is random per request.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import InvalidRequest

SESSION_HEADER = "mm-session"


@dataclass(frozen=True)
class TrafficSplit:
    targets: tuple[tuple[str, int], ...]  # (model id, weight); weights are whole percents summing to 100
    shadow: str = ""
    shadow_percent: int = 0
    _cumulative: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.targets:
            raise InvalidRequest("a traffic split needs at least one target")
        seen: set[str] = set()
        for mid, weight in self.targets:
            if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
                raise InvalidRequest(f"weight of target '{mid}' must be a whole percent from 0 to 100, got {weight!r}")
            if mid in seen:
                raise InvalidRequest(f"target '{mid}' is named twice")
            seen.add(mid)
        total = sum(w for _, w in self.targets)
        if total != 100:
            raise InvalidRequest(f"target weights must sum to 100, got {total}")
        if not 0 <= self.shadow_percent <= 100:
            raise InvalidRequest(f"shadow percent must be from 0 to 100, got {self.shadow_percent}")
        if self.shadow_percent and not self.shadow:
            raise InvalidRequest("a shadow percent needs a shadow model")
        if self.shadow and self.shadow in seen:
            raise InvalidRequest(f"shadow '{self.shadow}' is also a target")
        acc, cum = 0, []
        for _, w in self.targets:
            acc += w
            cum.append(acc)
        object.__setattr__(self, "_cumulative", tuple(cum))

    @property
    def primary(self) -> str:
        """The target with the largest weight (the first on a tie): what 'the' model of the vModel is."""
        return max(self.targets, key=lambda t: t[1])[0]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.targets) + ((self.shadow,) if self.shadow else ())

    def _pick(self, bucket: float) -> str:
        point = bucket * 100.0
        for (mid, _), edge in zip(self.targets, self._cumulative, strict=True):
            if point < edge:
                return mid
        return self.targets[-1][0]

    def choose(self, vmodel: str, session: str | None, rnd: Callable[[], float] = random.random) -> str:
        """The model that serves this request."""
        if len(self.targets) == 1:
            return self.targets[0][0]
        bucket = _session_bucket(vmodel, session) if session else rnd()
        return self._pick(bucket)

    def mirror(self, rnd: Callable[[], float] = random.random) -> bool:
        """Whether this request is also sent to the shadow."""
        return bool(self.shadow) and self.shadow_percent > 0 and rnd() * 100.0 < self.shadow_percent

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": [{"model_id": m, "weight": w} for m, w in self.targets],
            "shadow": {"model_id": self.shadow, "percent": self.shadow_percent} if self.shadow else None,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TrafficSplit:
        raw_targets = doc.get("targets")
        if not isinstance(raw_targets, Sequence) or isinstance(raw_targets, str | bytes):
            raise InvalidRequest("'targets' must be a list of {model_id, weight}")
        targets = []
        for k, t in enumerate(raw_targets):
            if not isinstance(t, Mapping) or not isinstance(t.get("model_id"), str):
                raise InvalidRequest(f"targets[{k}] needs a string 'model_id'")
            targets.append((t["model_id"], t.get("weight")))
        shadow = doc.get("shadow") or {}
        if not isinstance(shadow, Mapping):
            raise InvalidRequest("'shadow' must be {model_id, percent}")
        percent = shadow.get("percent", 0)
        if not isinstance(percent, int) or isinstance(percent, bool):
            raise InvalidRequest("shadow 'percent' must be a whole number from 0 to 100")
        return cls(targets=tuple(targets), shadow=str(shadow.get("model_id") or ""), shadow_percent=percent)  # type: ignore[arg-type]


def _session_bucket(vmodel: str, session: str) -> float:
    digest = hashlib.blake2b(f"{vmodel}\0{session}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / float(1 << 64)


def canary(stable: str, candidate: str, percent: int) -> TrafficSplit:
    """``percent`` of the traffic to ``candidate``, the rest to ``stable`` (KServe's canaryTrafficPercent)."""
    if percent >= 100:
        return TrafficSplit(targets=((candidate, 100),))
    if percent <= 0:
        return TrafficSplit(targets=((stable, 100),))
    return TrafficSplit(targets=((stable, 100 - percent), (candidate, percent)))
