"""What the benchmark scripts share: the hardware they name and the interleaved A/B timing loop."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()


def time_alternating(runs: Dict[str, Callable[[], Any]], repeats: int, warmup: int,
                     sync: Callable[[], None] = lambda: None) -> Tuple[Dict[str, List[float]], Dict[str, Any]]:
    """Seconds per call of each run, interleaved so machine noise hits all of them alike, and each
    run's last output. `sync` waits for an accelerator before the clock is read."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: Dict[str, List[float]] = {name: [] for name in runs}
    outputs: Dict[str, Any] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            outputs[name] = run()
            sync()
            times[name].append(time.perf_counter() - start)
    return times, outputs


def report(name: str, times: List[float], batch: int, width: int = 24) -> float:
    """Print a run's median and its individual times; return its images per second."""
    median = statistics.median(times)
    print(f"{name:{width}s} median {median:.3f} s/batch  {batch / median:8.2f} images/s  "
          f"(runs: {', '.join(f'{t:.3f}' for t in times)})", flush=True)
    return batch / median
