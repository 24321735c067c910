"""How much memory the process holds: RSS, and CUDA when torch uses it. The pool's budget and the
memory leak check both read it here."""

from __future__ import annotations

import gc
import os
import sys

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | None = None) -> int | None:
    """The resident set size of this process (or of `pid`): psutil, else /proc/PID/statm, else (this
    process only) its peak RSS; None where none of them can be read."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:  # the process is gone
            return None
    try:
        with open(f"/proc/{pid or 'self'}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        if pid is not None:
            return None
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cuda_allocated(synchronize: bool = False) -> int | None:
    """Bytes torch holds allocated on all CUDA devices; None when torch has not started CUDA.
    `synchronize` first waits for queued work, so that what it allocates is counted."""
    torch = sys.modules.get("torch")  # never imported here: a model that uses CUDA imported it
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    if synchronize:
        torch.cuda.synchronize()
    return sum(int(torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count()))


def cuda_bytes() -> int:
    """CUDA memory allocated by torch in this process; 0 without torch or a GPU."""
    return cuda_allocated() or 0


def used_bytes() -> int:
    """RSS plus CUDA memory: what the pool's memory budget counts."""
    return (rss_bytes() or 0) + cuda_bytes()


def release_freed_memory() -> None:
    """After a teardown: collect cycles and hand cached CUDA blocks back to the driver."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
