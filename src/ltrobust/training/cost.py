"""What an epoch costs: peak CPU resident memory and peak CUDA memory (REAT Table 14, TAET Fig. 6a).

``reset_peaks(device)`` at the start of an epoch's training steps, ``peak_memory_mb(device)`` at their end:

- ``peak_rss_mb``: the peak resident set size of this process, in MiB. On Linux the peak (``VmHWM``) is
  reset each epoch (``/proc/self/clear_refs``; ``getrusage``'s ``ru_maxrss`` follows it), so it is the
  epoch's own peak; where it cannot be reset
  it is the process' peak so far (``resource.getrusage``); ``None`` where neither exists (Windows).
- ``peak_cuda_mb``: ``torch.cuda.max_memory_allocated`` of the training device in MiB since the reset
  (tensors only, not the allocator's cache); ``None`` on a CPU device.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

__all__ = ["peak_memory_mb", "reset_peaks"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peaks(device: torch.device) -> None:
    """Start measuring the peaks anew (CUDA on ``device``; CPU RSS where the kernel allows)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB since the last :func:`reset_peaks` (see the module doc)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 1024), 1)


def peak_memory_mb(device: torch.device) -> dict[str, float | None]:
    """``{"peak_rss_mb", "peak_cuda_mb"}`` since the last :func:`reset_peaks` (MiB, one decimal)."""
    cuda = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1) if device.type == "cuda" else None
    return {"peak_rss_mb": peak_rss_mb(), "peak_cuda_mb": cuda}
