"""The mirrored decision log (mesh._decision_log): kept as the store's bytes, decoded when read, in
log order; filters by model or instance give what a scan of every decoded record gives."""

from __future__ import annotations

from mesh import _decision_log
from mesh._dashboard import ClusterOverview
from mesh._store_schema import DecisionRecord, encode
from tests.mesh.fakes import World, world

MODELS = ("ma", "mb", "modèle \"q\"", "m")  # "m" is a prefix of the others; one needs JSON escapes


def record(seq: int) -> DecisionRecord:
    a, b = MODELS[seq % 4], MODELS[(seq + 1) % 4]
    actions = (
        {"kind": "unload", "model_id": a, "instance_id": f"i{seq % 3}", "reason": f"cold; {b} was evicted for it", "room_for": b},
        {"kind": "load", "model_id": b, "instance_id": f"i{seq % 3}", "reason": "miss"},
    )
    return DecisionRecord(seq=seq, at=float(seq), leader="i0", actions=actions, usage={a: [float(seq), 1.0, 0.3, 1000.0]})


async def fill(w: World, seqs: range) -> None:
    for m in MODELS:
        await w.model(m)
    for seq in sorted(seqs, key=lambda s: (s * 7919) % len(seqs)):
        # out of order on purpose: the log is read in sequence order, whatever order it was written in
        await w.store.put(w.keys.decision(seq), encode(record(seq)))
    await w.settle(lambda: len(w.mirror.decisions) == len(seqs), "the decision log")


async def test_the_mirror_keeps_bytes_and_reads_records_in_log_order() -> None:
    async with world() as w:
        seqs = range(1, 301)
        await fill(w, range(1, 301))
        log = w.mirror.decisions
        assert all(type(v) is bytes for v in log.items.values())
        assert [r.seq for r in log.records()] == list(seqs)
        assert [r.seq for r in log.records(newest_first=True, after=295)] == [300, 299, 298, 297, 296]
        assert [r.seq for r in log.records(after=298)] == [299, 300]
        newest = log.newest()
        assert newest is not None and newest == record(300)
        # every record read decodes to what was written, and the decoded ones kept stay bounded
        assert list(log.records()) == [record(s) for s in seqs]
        assert len(log._cache) == _decision_log.CACHE_RECORDS
        # a key rewritten with other bytes reads the new record
        changed = DecisionRecord(seq=300, at=1.0, leader="i9")
        await w.store.put(w.keys.decision(300), encode(changed))
        await w.settle(lambda: log.newest() == changed, "the rewritten record")


async def test_filters_give_what_a_full_scan_gives() -> None:
    async with world() as w:
        await fill(w, range(1, 121))
        views = ClusterOverview(w.mirror, "i0", clock=w.clock)
        everything = views.decisions(limit=5000)["decisions"]
        assert len(everything) == 240 and views.decisions(limit=1)["last_seq"] == 120
        for model in MODELS:
            got = views.decisions(model=model, limit=5000)["decisions"]
            assert got == [d for d in everything if d["model_id"] == model] and got
        for inst in ("i0", "i1", "i2"):
            got = views.decisions(instance=inst, limit=5000)["decisions"]
            assert got == [d for d in everything if d["instance_id"] == inst] and got
        assert views.decisions(model="absent", limit=5000)["decisions"] == []
        assert views.leader_id() == "i0"
