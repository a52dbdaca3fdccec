"""Peak resident memory of a block of work, for the store's per-point record.

JAX's CPU client keeps no memory statistics (``Device.memory_stats()`` is None there), so
the process's own high-water mark is read: Linux resets it on writing 5 to
``/proc/self/clear_refs`` and reports it as ``VmHWM``. Elsewhere ``ru_maxrss`` is used,
which is never reset: a peak of everything before the block too, and said so.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any


def _status_bytes(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.peak`` (bytes), ``m.delta`` (over the RSS
    before the block) and ``m.as_dict()``."""

    def __enter__(self) -> PeakRSS:
        self.reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            pass
        self.before = _status_bytes("VmRSS") or 0
        return self

    def __exit__(self, *exc: Any) -> None:
        hwm = _status_bytes("VmHWM") if self.reset else None
        self.peak = hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.delta = max(0, self.peak - self.before)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rss_before_bytes": self.before,
            "peak_rss_bytes": self.peak,
            "peak_minus_before_bytes": self.delta,
            "method": "VmHWM after clear_refs" if self.reset else "ru_maxrss (never reset)",
        }
