"""How much memory the process holds, for the pool's budget: RSS, plus CUDA when torch uses it."""

from __future__ import annotations

import gc
import os
import sys

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident memory of this process (psutil where installed, /proc otherwise)."""
    try:
        import psutil
    except ImportError:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * _PAGE
        except OSError:
            return 0
    return int(psutil.Process().memory_info().rss)


def cuda_bytes() -> int:
    """CUDA memory allocated by torch in this process; 0 without torch or a GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0
    return int(sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())))


def used_bytes() -> int:
    return rss_bytes() + cuda_bytes()


def release_freed_memory() -> None:
    """After a teardown: collect cycles and hand cached CUDA blocks back to the driver."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
