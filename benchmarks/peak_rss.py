"""Peak resident memory of the calling process, not of the process that started it.

``getrusage(RUSAGE_SELF).ru_maxrss`` is wrong for that on Linux: a child made by fork + exec
starts with the parent's resident size as its high-water mark, so a benchmark whose parent
generated a 1 GB checkpoint reported ~1 GB for every child. ``VmHWM`` in ``/proc/self/status``
belongs to the process's own address space, which exec replaces.
"""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """The calling process's peak resident set size in MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
