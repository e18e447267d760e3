"""The size of Chroma's cache of loaded HNSW indexes in the embedded store.

Chroma 1.5 keeps every index it loads (one per collection: here one per persona and user scope)
in an LRU cache sized from the open-files soft limit when the client starts
(``RLIMIT_NOFILE // 5``, as a loaded index keeps files open: 4,000 with a limit of 20,000).
Each loaded index holds about 2.8 MB however few vectors it has (hnswlib allocates a table of
65,536 label locks per index), so a long-running bot that has met 3,000 scopes holds 8 GB, and
every further load zeroes fresh memory from the kernel. ``bench/bench_chroma_cache.py`` on
2,000 scopes of 33 vectors: with the default cache, cold loads of 5.1 to 5.6 ms and RSS up by
5.4 GB; with a cache of 256, 3.4 to 3.6 ms once it was full (freed indexes' memory is reused)
and RSS up by 0.8 GB. An evicted scope is loaded again on its next use; its writes are on disk
(see :mod:`memory.sealing`), so nothing is lost.

:func:`index_cache_limit` sizes that cache. Chroma has no setting for it (and accepts no other
API class), so for the moment an embedded client starts, the soft open-files limit is lowered
to five files an index, then restored: the way Chroma's own server is sized (its
``chroma_server_nofile`` setting). Limits: the first start of a store path in a process sets
its size (Chroma shares one client system per path); the lowered limit keeps room for the files
the process has open plus :data:`SPARE_FILES`, so with many files open the cache comes out
larger than asked; other threads see the lower limit during that moment; a limit already lower
is left alone. A Chroma server (``HttpClient``) sizes its own cache.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["FILES_PER_INDEX", "SPARE_FILES", "index_cache_limit"]

#: Chroma's divisor: the open files it budgets for one loaded index.
FILES_PER_INDEX = 5
#: Files the process may open beyond those it has while the limit is lowered (Chroma's start
#: opens its database and imports modules).
SPARE_FILES = 64
_LOCK = threading.Lock()


@contextlib.contextmanager
def index_cache_limit(indexes: int) -> Iterator[None]:
    """Chroma clients started in the block keep at most about ``indexes`` indexes loaded."""
    if indexes < 1:
        raise ValueError(f"the index cache needs room for one index at least, not {indexes}")
    with _LOCK:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = max(indexes * FILES_PER_INDEX, _open_files() + SPARE_FILES)
        lower = soft == resource.RLIM_INFINITY or wanted < soft
        if lower:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        try:
            yield
        finally:
            if lower:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_files() -> int:
    """Files this process has open (0 where ``/proc`` does not say)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
