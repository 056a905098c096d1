"""Which instances hold a model (the mirror's derived index): it follows instances coming, going and
shutting down, and an instance's routine usage updates do not make the mirror recompute it."""

from __future__ import annotations

from mesh._dashboard import ClusterOverview
from mesh._model_status import ModelState, model_status
from mesh._store_schema import CopyState, InstanceRecord, encode
from tests.mesh.fakes import world


async def test_holders_follow_instances_and_ignore_usage_updates() -> None:
    async with world() as w:
        await w.instance("a", "a:1")
        await w.instance("b", "b:1")
        for mid in ("m", "n"):
            await w.copy(mid, "a")
        await w.copy("m", "b")
        await w.settle(lambda: w.mirror.holders("m") == ("a", "b") and w.mirror.holders("n") == ("a",))

        recomputed: list[str] = []
        real = w.mirror._recompute_holders

        def spy(mid: str) -> None:
            recomputed.append(mid)
            real(mid)

        w.mirror._recompute_holders = spy  # type: ignore[method-assign]
        # a usage update (what every publish under load writes): nothing to recompute
        rev = await w.store.put(w.keys.instance("a"), encode(InstanceRecord(
            instance_id="a", address="a:1", capacity_bytes=1 << 30, used_bytes=123 << 20, loading=1)))
        await w.settle(lambda: w.mirror.instances.revision >= rev, "the usage update")
        assert recomputed == [] and w.mirror.holders("m") == ("a", "b")

        # b shuts down: m is served by a alone; only models with a copy on b are looked at
        await w.instance("b", "b:1", shutting_down=True)
        await w.settle(lambda: w.mirror.holders("m") == ("a",), "b shutting down")
        assert recomputed == ["m"]
        # a goes: b, though shutting down, still serves m (nothing else holds it); n has no holder
        await w.store.delete(w.keys.instance("a"))
        await w.settle(lambda: w.mirror.holders("m") == ("b",) and w.mirror.holders("n") == (), "a gone")
        # a copy published before its instance record counts once the instance appears
        await w.copy("n", "c")
        await w.settle(lambda: "n/c" in w.mirror.copies.items, "the early copy")
        assert w.mirror.holders("n") == ()
        await w.instance("c", "c:1")
        await w.settle(lambda: w.mirror.holders("n") == ("c",), "c appearing")


async def test_models_assigned_to_an_instance_follow_the_assignments() -> None:
    """The index an agent reconciles from: every assignment's change moves it, and a mirror started
    on an existing cluster builds it from the listing."""
    async with world() as w:
        def scanned(iid: str) -> frozenset[str]:  # what the index replaces: a scan of every assignment
            return frozenset(mid for mid, rec in w.mirror.assignments.items.items() if iid in rec.instances)

        await w.assign("m", "a", "b")
        await w.assign("n", "a")
        await w.settle(lambda: w.mirror.assigned_to("a") == {"m", "n"}, "two assignments")
        assert w.mirror.assigned_to("b") == {"m"} and w.mirror.assigned_to("c") == frozenset()
        await w.assign("m", "c")  # moved: off a and b, onto c
        await w.settle(lambda: w.mirror.assigned_to("c") == {"m"}, "m moved")
        assert w.mirror.assigned_to("a") == {"n"} and w.mirror.assigned_to("b") == frozenset()
        await w.store.delete(w.keys.assignment("n"))
        await w.settle(lambda: w.mirror.assigned_to("a") == frozenset(), "n unassigned")
        for iid in ("a", "b", "c"):
            assert w.mirror.assigned_to(iid) == scanned(iid)

        # a second mirror started on this store lists what is there
        from mesh._cluster_mirror import ClusterMirror

        late = ClusterMirror(w.store, w.keys)
        await late.start()
        try:
            assert late.assigned_to("c") == {"m"} and late.assigned_to("a") == frozenset()
        finally:
            await late.stop()


async def test_a_copy_assigned_to_a_live_instance_without_a_record_is_loading() -> None:
    """A load writes its first copy record only once it has run a while (a quick one only its
    outcome), so an assignment to a live instance with no record yet is a load under way: another
    instance's remembered failure is not the model's answer meanwhile, and the status lists that
    copy as loading. Once that instance is gone, the failure is the answer again."""
    async with world() as w:
        await w.model("m")
        for iid in ("a", "b"):
            await w.instance(iid, f"{iid}:1")
        await w.copy("m", "a", CopyState.FAILED, error="corrupt", failed_until=w.clock() + 60)
        await w.assign("m", "a")
        await w.settle(lambda: w.mirror.failure("m") == "corrupt", "the failure")
        assert model_status(w.mirror, "m", w.clock()).status == ModelState.LOADING_FAILED

        await w.assign("m", "a", "b")  # placed again, on b: b's load has written nothing yet
        await w.settle(lambda: w.mirror.assigned("m") == ("a", "b"), "the new assignment")
        assert w.mirror.loading_on("m") == ("b",)
        assert w.mirror.failure("m") is None
        status = model_status(w.mirror, "m", w.clock())
        assert status.status == ModelState.LOADING
        assert {(c.location, c.status) for c in status.copies} == {("a", ModelState.LOADING_FAILED), ("b", ModelState.LOADING)}
        row = ClusterOverview(w.mirror, "a", clock=w.clock).model_row("m")  # the dashboard's and the CLI's row
        assert (row["state"], row["copies"]) == (ModelState.LOADING, {"loaded": 0, "loading": 1, "failed": 1})

        await w.store.delete(w.keys.instance("b"))  # b died before it reported anything
        await w.settle(lambda: "b" not in w.mirror.instances.items, "b gone")
        assert w.mirror.loading_on("m") == ()
        assert w.mirror.failure("m") == "corrupt"
        assert model_status(w.mirror, "m", w.clock()).status == ModelState.LOADING_FAILED
