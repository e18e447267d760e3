"""Chroma's HNSW index cache: memory per loaded index, cold loads by cache size, and what an
eviction does to records not yet persisted, with and without :class:`memory.chroma_store.
SealedCollection`.

Chroma 1.5's embedded client keeps each index it loads in an LRU cache sized from the
open-files soft limit when the client starts (``RLIMIT_NOFILE // 5``). Each part runs in a
fresh process with that limit set for the client's start (then restored), on stores of
one-collection-per-scope like Greenroom's (``memory.chroma_store.COLLECTION_METADATA``, with the
two lookup indexes ``index_chroma_lookups`` adds):

* ``loads``: every scope of a 2,000-scope store (33 vectors each) queried once; cold-load time
  per quarter and RSS growth, default cache against a cache of 256. Target: with the cache of
  256, RSS grows by at most 256 indexes of 3 MB plus 300 MB.
* ``evict``: 120 collections written one record at a time (1, 2 or 3 records), then each queried
  again after a cache of 40 evicted it, by Chroma alone (a diagnostic of Chroma) and sealed.
  Correctness check: sealed, no collection fails or returns fewer records (exit 1 otherwise).

    .venv/bin/python bench/bench_chroma_cache.py [--scopes 2000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory.chroma_store import COLLECTION_METADATA, SealedCollection, index_chroma_lookups

_DIM = 384
_INDEX_MB = 3
_SLACK_MB = 300


def _client(path: Path, cache: int | None):
    import chromadb
    from chromadb.config import Settings

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if cache is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (cache * 5, hard))
    try:
        return chromadb.PersistentClient(
            path=str(path), settings=Settings(anonymized_telemetry=False)
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def build(path: Path, scopes: int) -> None:
    import numpy as np

    client = _client(path, None)
    rng = np.random.default_rng(0)
    for scope in range(scopes):
        collection = client.create_collection(
            f"scope{scope}", embedding_function=None, metadata=dict(COLLECTION_METADATA)
        )
        vectors = rng.standard_normal((33, _DIM)).astype("float32")
        collection.add(ids=[str(i) for i in range(33)], embeddings=vectors)
    index_chroma_lookups(path / "chroma.sqlite3")


def loads(path: Path, scopes: int, cache: int | None) -> bool:
    """Prints each quarter's cold loads and RSS; with a cache, whether RSS stayed in bounds."""
    import numpy as np

    client = _client(path, cache)
    client.heartbeat()
    query = np.random.default_rng(1).standard_normal(_DIM).astype("float32")
    start = _rss_mb()
    step = scopes // 4
    label = "default" if cache is None else str(cache)
    for quarter in range(4):
        began = time.perf_counter()
        for scope in range(quarter * step, (quarter + 1) * step):
            client.get_collection(f"scope{scope}", embedding_function=None).query(
                query_embeddings=[query], n_results=5
            )
        each = (time.perf_counter() - began) / step * 1000
        grown = _rss_mb() - start
        print(
            f"  cache {label:>7}: scopes {quarter * step:>5}-{(quarter + 1) * step:<5} "
            f"cold load {each:5.2f} ms each; RSS +{grown:6.0f} MB",
            flush=True,
        )
    if cache is None:
        return True
    bound = cache * _INDEX_MB + _SLACK_MB
    ok = grown <= bound
    verdict = "PASS" if ok else "MISS"
    print(f"  cache {label:>7}: RSS +{grown:.0f} MB [target <= {bound} MB: {verdict}]")
    return ok


def evict(path: Path, records: int, sealed: bool) -> bool:
    """Writes, evicts, reads back; returns whether every record came back."""
    import numpy as np

    client = _client(path, 40)
    rng = np.random.default_rng(2)
    for index in range(120):
        collection = client.create_collection(
            f"evict{index}", embedding_function=None, metadata=dict(COLLECTION_METADATA)
        )
        if sealed:
            collection = SealedCollection(collection)
        for record in range(records):
            vector = rng.standard_normal(_DIM).tolist()
            collection.add(ids=[f"r{record}"], embeddings=[vector])
        collection.query(query_embeddings=[vector], n_results=1)
    failed = short = 0
    for index in range(120):
        try:
            result = client.get_collection(f"evict{index}", embedding_function=None).query(
                query_embeddings=[rng.standard_normal(_DIM).tolist()], n_results=records
            )
            short += len(result["ids"][0]) != records
        except Exception:
            failed += 1
    lost = failed + short
    how = "sealed" if sealed else "Chroma alone"
    verdict = f" [target 0: {'PASS' if not lost else 'FAIL'}]" if sealed else " (diagnostic)"
    print(
        f"  {how:>12}, {records} record(s) each, cache of 40, 120 collections: {failed} fail, "
        f"{short} return fewer records than they hold{verdict}",
        flush=True,
    )
    return not lost or not sealed


def _part(*args: str) -> bool:
    """Runs one part in a fresh process; whether it met its target or check."""
    return subprocess.run([sys.executable, __file__, "--part", *args], check=False).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scopes", type=int, default=2000)
    parser.add_argument("--dir", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--part", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        kind, path, value = args.part[0], Path(args.part[1]), args.part[2]
        if kind == "build":
            build(path, int(value))
            ok = True
        elif kind == "loads":
            cache, scopes = args.part[3], int(value)
            ok = loads(path, scopes, None if cache == "default" else int(cache))
        else:
            ok = evict(path, int(value), sealed=args.part[3] == "sealed")
        sys.exit(0 if ok else 1)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        store = Path(folder) / "scopes"
        if not _part("build", str(store), str(args.scopes)):
            sys.exit("FAIL: building the store failed")
        print(
            f"{args.scopes} scopes of 33 vectors; the open-files soft limit is "
            f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
        )
        for cache in ("default", "256"):
            _part("loads", str(store), str(args.scopes), cache)  # a MISS is printed, not fatal
        print("records not yet persisted, after an eviction (same process):")
        correct = True
        for records in (1, 2, 3):
            for how in ("alone", "sealed"):
                folder_of = Path(folder) / f"evict{records}-{how}"
                correct &= _part("evict", str(folder_of), str(records), how)
    if not correct:
        sys.exit("FAIL: sealed collections lost records after an eviction")


if __name__ == "__main__":
    main()
