"""Puller throughput: a 500 MB artifact from a local S3 server, puller vs a plain boto3 transfer.

Run: ``python -m bench.bench_puller [--size-mb 500] [--repeat 3]``. One moto S3 server (child
process, loopback) holds one object; in the same run, alternating, each contender copies it
to local disk:

* ``puller``: ``Puller.stage`` (stream to a staging dir, verified by the store's CRC or the
  ETag's MD5, rename into the cache);
* ``boto3 download_file``: what ``aws s3 cp`` does (s3transfer, default TransferConfig:
  8 MiB ranged parts on 10 threads);
* ``boto3 single stream``: ``download_file`` with multipart off (one GET, like the puller).

The best of ``--repeat`` runs counts for each; the page cache is synced before each timed
run (a contender must not pay for the previous one's write-back). Target (issue 5): puller >= 0.9x the boto3
transfer. Then the cache-hit staging time: ``stage`` of the artifact already cached
(median and p99 of many calls).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
_MOTO = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )


def _boto3_download(endpoint: str, dest: Path, *, multipart: bool) -> float:
    from boto3.s3.transfer import TransferConfig

    client = _client(endpoint)
    config = TransferConfig() if multipart else TransferConfig(multipart_threshold=1 << 62, use_threads=False)
    client.head_bucket(Bucket="bench")  # connection and credentials ready, as for the puller
    os.sync()
    start = time.perf_counter()
    client.download_file("bench", "artifact.bin", str(dest), Config=config)
    return time.perf_counter() - start


async def _puller_download(endpoint: str, cache: Path) -> tuple[float, float, float]:
    sys.path.insert(0, str(ROOT))
    from puller import Puller, PullerSettings, StorageConfig, StorageRef

    config = StorageConfig.from_mapping(
        {
            "bench": json.dumps(
                {
                    "type": "s3",
                    "access_key_id": "bench",
                    "secret_access_key": "bench",
                    "endpoint_url": endpoint,
                    "region": "us-east-1",
                    "bucket": "bench",
                }
            )
        }
    )
    puller = Puller(PullerSettings(cache_dir=cache, cache_budget_bytes=8 << 30), config)
    await puller.start()
    ref = StorageRef(storage_key="bench", path="artifact.bin")
    try:
        await puller.stage(StorageRef(storage_key="bench", path="warm.bin"))  # clients built, imports done
        os.sync()  # every contender starts with no dirty pages being written back
        start = time.perf_counter()
        staged = await puller.stage(ref)
        elapsed = time.perf_counter() - start
        hits = []
        for _ in range(2000):
            t0 = time.perf_counter()
            await puller.stage(ref)
            hits.append(time.perf_counter() - t0)
            await puller.release(staged.key)
        hits.sort()
        return elapsed, statistics.median(hits), hits[int(len(hits) * 0.99)]
    finally:
        await puller.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    size = a.size_mb * MiB
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None and proc.stdin is not None
    endpoint = f"http://127.0.0.1:{int(proc.stdout.readline())}"
    best: dict[str, float] = {}
    hit_p50 = hit_p99 = 0.0
    try:
        with tempfile.TemporaryDirectory(prefix="bench-puller-") as tmp:
            work = Path(tmp)
            blob = work / "blob.bin"
            with open(blob, "wb") as f:
                for _ in range(a.size_mb):
                    f.write(os.urandom(MiB))
            client = _client(endpoint)
            client.create_bucket(Bucket="bench")
            with open(blob, "rb") as f:
                client.put_object(Bucket="bench", Key="artifact.bin", Body=f)  # one part: MD5 ETag
            client.put_object(Bucket="bench", Key="warm.bin", Body=b"w")
            blob.unlink()
            for i in range(a.repeat):
                runs: dict[str, float] = {}
                cache = work / f"cache{i}"
                t, p50, p99 = asyncio.run(_puller_download(endpoint, cache))
                runs["puller"] = t
                hit_p50, hit_p99 = (p50, p99) if i == 0 else (min(hit_p50, p50), min(hit_p99, p99))
                shutil.rmtree(cache)
                for name, multipart in (("boto3 download_file", True), ("boto3 single stream", False)):
                    dest = work / "dest.bin"
                    runs[name] = _boto3_download(endpoint, dest, multipart=multipart)
                    assert dest.stat().st_size == size
                    dest.unlink()
                for name, t in runs.items():
                    best[name] = min(best.get(name, t), t)
                print(f"run {i + 1}: " + ", ".join(f"{n} {size / t / MiB:.0f} MiB/s" for n, t in runs.items()))
    finally:
        proc.stdin.close()
        proc.wait(30)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"artifact: {a.size_mb} MiB from moto S3 on loopback, best of {a.repeat}")
    print(f"{'contender':<22}{'seconds':>9}{'MiB/s':>9}{'puller ratio':>14}")
    for name, t in best.items():
        print(f"{name:<22}{t:>9.2f}{size / t / MiB:>9.0f}{best[name] / best['puller']:>14.2f}")
    print(f"cache-hit stage(): p50 {hit_p50 * 1e6:.0f} us, p99 {hit_p99 * 1e6:.0f} us")


if __name__ == "__main__":
    main()
