"""Peak memory of a block of code, for the benchmarks.

``getrusage``'s maximum RSS never goes down, so a spike before the block (imports,
warm-up) hides what the block itself uses; tracemalloc does not see torch's
allocations. PeakRSS samples the process's current resident set size from
/proc/self/statm in a background thread instead (Linux), or reads
torch.cuda.max_memory_allocated on a GPU.
"""

import os
import threading

import torch

PAGE = os.sysconf("SC_PAGE_SIZE")


def current_rss_mb():
    """Resident set size of this process now, in MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


class PeakRSS:
    """Context manager: ``before_mb`` and ``peak_mb`` of the block it wraps.

    On a GPU, ``peak_mb`` is the peak of allocated CUDA memory in the block.
    """

    def __init__(self, interval=0.005):
        self.interval = interval
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __enter__(self):
        self.gpu = torch.cuda.is_available()
        if self.gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before_mb = torch.cuda.memory_allocated() / 2**20
            self.peak_mb = self.before_mb
            return self
        self.before_mb = self.peak_mb = current_rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.gpu:
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            return False
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())
        return False
