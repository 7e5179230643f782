"""CPU threads for the row-blocked AFCL core: whole blocks per thread instead of split passes.

Split out of ``_blockwise.py`` (which uses it for its forward and backward block loops).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

# With ATen's OpenMP backend, torch.set_num_threads called in a thread sets that thread's own
# OpenMP team size only (checked: the calling thread keeps its count).
PER_THREAD_NUM_THREADS = "parallel backend: OpenMP" in torch.__config__.parallel_info()
_NUM_THREADS_LOCK = threading.Lock()
THREAD_BLOCKS_FROM = 2**20  # anchor x contrast pairs


def block_workers(n_anchors: int, block_size: int, device: torch.device) -> int:
    """How many CPU threads take blocks in parallel (1: blocks in turn, intra-op threads).

    A block is ~15 elementwise passes of a few MiB each. Splitting every pass over the intra-op
    threads costs a fork/join per pass, and on oversubscribed cores (data loader workers, other
    jobs) every join waits for a descheduled thread: at N = 4096 with 2 threads on 2 busy cores
    the blockwise loss ran 8x slower than with 1 thread. Giving each thread whole blocks (its ops
    single-threaded) has no joins inside a block, so it degrades only in proportion to the load.
    """
    if device.type != "cpu" or not PER_THREAD_NUM_THREADS:
        return 1
    n_blocks = -(-n_anchors // block_size)
    return max(1, min(torch.get_num_threads(), n_blocks))


def for_each_block(n_anchors: int, block_size: int, n_workers: int, work: Callable[[int, int, int], None]) -> None:
    """work(start, stop, worker) for every block; worker w takes blocks w, w + n_workers, ..."""
    starts = list(range(0, n_anchors, block_size))
    if n_workers <= 1:
        for start in starts:
            work(start, min(start + block_size, n_anchors), 0)
        return

    def run(worker: int) -> None:
        # Grad mode and autocast are thread-local and default to on in a new thread.
        torch.set_num_threads(1)
        with torch.no_grad(), torch.autocast(device_type="cpu", enabled=False):
            for start in starts[worker::n_workers]:
                work(start, min(start + block_size, n_anchors), worker)

    main_threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for future in [pool.submit(run, w) for w in range(n_workers)]:
                future.result()
    finally:
        # MKL's thread count is process-wide: give the caller back its setting.
        with _NUM_THREADS_LOCK:
            torch.set_num_threads(main_threads)
