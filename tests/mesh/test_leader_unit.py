"""The placement leader built directly (memory store, its mirror, the real policy, a manual clock):
misses become assignments logged in the one decision log, failed copies are unassigned, vModels are
promoted (auto-deleting an unreferenced old target) and a new target is asked for once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from mesh._leader import Leader
from mesh._store_schema import CopyState, LeaderRecord, MissRecord, VModelRecord, decode, encode
from placement import Policy, PolicySettings
from tests.mesh.cluster import wait_until
from tests.mesh.fakes import World, world

ME = "lead"


@dataclass
class Rig:
    w: World
    leader: Leader


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with world() as w:
        lease = await w.store.grant_lease(30)
        await w.instance(ME, "127.0.0.1:1")
        await w.instance("other", "127.0.0.1:2")
        await w.settle(lambda: len(w.mirror.instances.items) == 2)
        leader = Leader(ME, w.store, w.mirror, Policy(PolicySettings()), lambda: lease, tick_s=3600, failure_ttl_s=60, clock=w.clock)
        await leader.start()
        try:
            await wait_until(lambda: leader.is_leader, 5, "leadership")
            yield Rig(w, leader)
        finally:
            await leader.stop()


async def _failed_copy_then_a_miss(w: World) -> None:
    """Model "bad" assigned to "other", whose copy failed (mirrored), then a miss of a new model "m"."""
    await w.model("bad")
    await w.assign("bad", "other")
    await w.copy("bad", "other", CopyState.FAILED, error="boom", failed_until=w.clock() + 60)
    await w.settle(lambda: w.mirror.failure("bad") == "boom")
    await w.model("m", predicted_size_bytes=1000)
    await w.store.put(w.keys.miss("m"), encode(MissRecord(model_id="m", instance_id="other", at=w.clock())))


async def test_a_miss_becomes_one_assignment_and_one_logged_decision(rig: Rig) -> None:
    w = rig.w
    await w.model("m", predicted_size_bytes=1000)
    await w.store.put(w.keys.miss("m"), encode(MissRecord(model_id="m", instance_id="other", at=w.clock())))

    await w.settle(lambda: bool(w.mirror.assigned("m")) and "m" not in w.mirror.misses.items, "the assignment")
    assert len(w.mirror.assigned("m")) == 1
    await w.settle(lambda: bool(w.mirror.decisions.items), "the decision record")
    (rec,) = w.mirror.decisions.records()
    assert rec.leader == ME and rec.at == w.clock()
    assert [(a["kind"], a["model_id"]) for a in rec.actions] == [("load", "m")]
    # describe() reads the same log, not a second one
    described = rig.leader.describe()
    assert described["leader"] is True
    assert [(d["kind"], d["model_id"], d["at"]) for d in described["decisions"]] == [("load", "m", w.clock())]


async def test_a_failed_copy_is_unassigned(rig: Rig) -> None:
    w = rig.w
    await _failed_copy_then_a_miss(w)  # any unanswered miss makes the leader clean up first

    await w.settle(lambda: not w.mirror.assigned("bad"), "the failed copy unassigned")
    reasons = [a["reason"] for r in w.mirror.decisions.records() for a in r.actions if a["model_id"] == "bad"]
    assert reasons == ["load_failed: boom"]


async def test_vmodel_target_is_asked_for_then_promoted_and_the_old_target_auto_deleted(rig: Rig) -> None:
    w = rig.w
    await w.model("old", auto_delete=True)
    await w.model("new")
    await w.copy("old", "other")
    await w.vmodel("v", "old", "new")  # in transition: nothing assigned to load the target yet

    await w.settle(lambda: "new" in w.mirror.misses.items or bool(w.mirror.assigned("new")), "a load asked for the target")
    kv = await w.store.get(w.keys.miss("new"))
    if kv is not None:  # not answered yet: it was asked for by the leader
        assert decode(MissRecord, kv.value).instance_id == ME
    # the target loads somewhere: the leader moves the vModel and deletes the old, unreferenced target
    await w.copy("new", "other")
    await w.settle(lambda: w.mirror.resolve("v") == "new", "the promotion")
    vm = w.mirror.vmodels.items["v"]
    assert (vm.active, vm.target, vm.failed) == ("new", "new", False)
    await w.settle(lambda: "old" not in w.mirror.models.items, "the old target auto-deleted")
    assert "new" in w.mirror.models.items


async def test_old_target_still_used_by_another_vmodel_is_kept(rig: Rig) -> None:
    w = rig.w
    await w.model("old", auto_delete=True)
    await w.model("new")
    await w.copy("old", "other")
    await w.copy("new", "other")
    await w.store.put(w.keys.vmodel("keep"), encode(VModelRecord(name="keep", active="old", target="old")))
    await w.vmodel("v", "old", "new")

    await w.settle(lambda: w.mirror.resolve("v") == "new", "the promotion")
    assert "old" in w.mirror.models.items  # "keep" still refers to it


async def test_an_assignment_carries_the_size_placement_planned_with(rig: Rig) -> None:
    """Unmeasured models are sized by their prediction times the measured/predicted ratio learned for
    their type; the assignment says that size, which the agent then reserves for the load."""
    w = rig.w
    await w.model("seen", predicted_size_bytes=1000)
    await w.assign("seen", "other")
    await w.copy("seen", "other", size_bytes=2500, size_measured=True)  # loads at 2.5x its prediction
    await w.model("m", predicted_size_bytes=10_000)
    await w.settle(lambda: w.mirror.holders("seen") == ("other",) and "m" in w.mirror.models.items)
    await w.store.put(w.keys.miss("m"), encode(MissRecord(model_id="m", instance_id="other", at=w.clock())))
    await w.settle(lambda: bool(w.mirror.assigned("m")), "the assignment")
    assert w.mirror.assignments.items["m"].planned_bytes == 25_000


async def test_the_cleanup_before_a_miss_checks_only_what_changed_and_still_finds_failures(rig: Rig) -> None:
    """Before each batch of misses the leader checks only the models whose copy failed or whose
    assignment changed since its last cleanup (the tick checks every one); an instance that goes
    makes the next cleanup check every assignment."""
    w = rig.w
    for i in range(50):
        await w.model(f"idle{i}")
        await w.assign(f"idle{i}", "other")
    await w.settle(lambda: len(w.mirror.assignments.items) == 50)
    await rig.leader._cleanup()  # the tick's: everything, and nothing is noted any more
    rig.leader.view()  # the placement view has recomputed them too (it reads copies_of as well)
    checked: list[str] = []
    real = w.mirror.copies_of

    def counting(mid: str) -> object:
        checked.append(mid)
        return real(mid)

    w.mirror.copies_of = counting  # type: ignore[method-assign]
    await _failed_copy_then_a_miss(w)
    await w.settle(lambda: not w.mirror.assigned("bad") and bool(w.mirror.assigned("m")), "the failed copy unassigned, m placed")
    assert "bad" in checked and not any(mid.startswith("idle") for mid in checked)

    # an instance that goes: the next cleanup checks every assignment, and unassigns its copies
    checked.clear()
    await w.store.delete(w.keys.instance("other"))
    await w.settle(lambda: "other" not in w.mirror.instances.items)
    await w.model("n", predicted_size_bytes=1000)
    await w.store.put(w.keys.miss("n"), encode(MissRecord(model_id="n", instance_id=ME, at=w.clock())))
    await w.settle(lambda: not any(w.mirror.assigned(f"idle{i}") for i in range(50)), "the gone instance's copies unassigned")
    assert {f"idle{i}" for i in range(50)} <= set(checked)
    reasons = {a["reason"] for r in w.mirror.decisions.records() for a in r.actions if a["model_id"].startswith("idle")}
    assert reasons == {"instance_gone"}


async def test_the_copies_of_an_instance_that_goes_are_unassigned_past_one_transaction(rig: Rig) -> None:
    """An instance with more copies than one store transaction holds (etcd's --max-txn-ops) goes:
    the leader unassigns them in parts, each part its own logged decision, and keeps deciding;
    the other instance's copies stay assigned."""
    w = rig.w
    w.store.max_txn_ops = 64  # etcd's --max-txn-ops lowered: ten models a part (see Leader._parts)
    n = 45
    for i in range(n):
        await w.model(f"gone{i}")
        await w.assign(f"gone{i}", "other")
    await w.model("kept")
    await w.assign("kept", ME)
    await w.settle(lambda: len(w.mirror.assignments.items) == n + 1)
    await w.store.delete(w.keys.instance("other"))
    await w.settle(lambda: "other" not in w.mirror.instances.items)
    await w.model("m", predicted_size_bytes=1000)
    await w.store.put(w.keys.miss("m"), encode(MissRecord(model_id="m", instance_id=ME, at=w.clock())))
    await w.settle(
        lambda: not any(w.mirror.assigned(f"gone{i}") for i in range(n)) and bool(w.mirror.assigned("m")),
        "every copy of the gone instance unassigned, then the miss placed",
    )
    assert tuple(w.mirror.assigned("kept")) == (ME,)
    parts = [r.actions for r in w.mirror.decisions.records() if any(a["model_id"].startswith("gone") for a in r.actions)]
    assert len(parts) == 5 and all(len(p) <= 10 for p in parts)
    assert sorted(a["model_id"] for p in parts for a in p) == sorted(f"gone{i}" for i in range(n))
    assert {a["reason"] for p in parts for a in p} == {"instance_gone"}
    assert rig.leader.is_leader


def test_a_decision_too_big_for_one_transaction_is_split_by_model_shrinking_first(rig: Rig) -> None:
    """Whole models a part; models that only lose copies go first, so a load never lands in a
    part before the evictions that make its room; ``extra`` room is kept for the miss record."""
    from placement import Action

    rig.w.store.max_txn_ops = 64  # ten models a part, nine with one extra op
    evict = [Action(kind="unload", model_id=f"v{i}", instance_id=ME, reason="evict") for i in range(15)]
    move = [Action(kind="load", model_id="mv", instance_id=ME, reason="move"),
            Action(kind="unload", model_id="mv", instance_id="other", reason="move")]
    load = [Action(kind="load", model_id="big", instance_id=ME, reason="miss")]
    parts = rig.leader._parts([*load, *move, *evict], n_extra=1)
    assert [len({a.model_id for a in p}) for p in parts] == [9, 8]
    assert {a.model_id for a in parts[0]} == {f"v{i}" for i in range(9)}
    assert [a.model_id for a in parts[1]][-3:] == ["big", "mv", "mv"]  # loads last, a model's actions together
    small = [*load, *evict[:3]]
    assert rig.leader._parts(small, n_extra=1) == [small]  # fits: one atomic transaction, order kept


class _CountingStore:
    """The store, with the calls a campaign makes counted."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.campaign_calls = 0

    async def cas(self, *a: object, **kw: object) -> object:
        self.campaign_calls += 1
        return await self._inner.cas(*a, **kw)  # type: ignore[attr-defined]

    async def get(self, *a: object, **kw: object) -> object:
        self.campaign_calls += 1
        return await self._inner.get(*a, **kw)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


async def test_a_follower_campaigns_when_the_leader_key_changes_not_on_every_change(rig: Rig) -> None:
    """Under churn a follower tried the leader key (a compare-and-swap and a read) on every change
    of copies, misses or instances; it tries when the key changes. With the periodic retry pushed
    out of the test's reach, only the key's change can make it leader."""
    w = rig.w
    store = _CountingStore(w.store)
    lease = await w.store.grant_lease(30)
    follower = Leader("other", store, w.mirror, Policy(PolicySettings()), lambda: lease,  # type: ignore[arg-type]
                      tick_s=3600, failure_ttl_s=60, clock=w.clock)
    follower.campaign_retry_s = 3600.0
    await follower.start()
    try:
        await wait_until(lambda: store.campaign_calls >= 2, 5, "the follower's first attempt")  # a cas, a read
        first = store.campaign_calls
        for i in range(40):  # the cluster churns: copies come and go
            await w.copy(f"c{i}", ME)
        await w.settle(lambda: len(w.mirror.copies.items) == 40, "the copies")
        assert store.campaign_calls == first, "the follower went to the store on changes that were not the leader key's"
        assert not follower.is_leader

        await rig.leader.stop()  # steps down: deletes the leader key
        await wait_until(lambda: follower.is_leader, 5, "the follower taking over")
        assert decode(LeaderRecord, (await w.store.get(w.keys.leader)).value).instance_id == "other"  # type: ignore[union-attr]
    finally:
        await follower.stop()
