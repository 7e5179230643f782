"""Where the row-blocked AFCL core runs and with which block size (split out of ``_blockwise.py``).

The numbers here are measurements on one machine (CPU) or, where marked, guesses to be replaced by
``benchmarks/gpu/run.sh``'s CUDA figures (``bench_losses.py --device cuda``).
"""

from __future__ import annotations

import torch

# Memory for one block's temporaries. The backward holds about LIVE_BUFFERS float (B, M) buffers at
# once (similarities/log p, p, log q, focal weight u, ratio r, the gradient block, masks).
# On CPU each (B, M) buffer of a 64 MiB budget is 8 MiB, within the last-level cache of the machine
# this was tuned on, and B = 512 rows at N = 4096. At N = 4096 (benchmarks/bench_losses.py
# --block-sizes) blocks of 128 to 1024 rows ran alike on a quiet core; on oversubscribed cores many
# small blocks (many short parallel regions) were up to several times slower, so not smaller.
# On a GPU a larger block amortises kernel launches; 512 MiB is untested here (no GPU in the
# session that wrote this) but small next to any training GPU's memory.
LIVE_BUFFERS = 8
CPU_BLOCK_BUDGET_BYTES = 64 * 2**20
GPU_BLOCK_BUDGET_BYTES = 512 * 2**20


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def auto_block_size(n_anchors: int, n_contrast: int, device: torch.device, dtype: torch.dtype) -> int:
    """Anchor rows per block so that one block's temporaries fit the per-device memory budget."""
    budget = GPU_BLOCK_BUDGET_BYTES if device.type == "cuda" else CPU_BLOCK_BUDGET_BYTES
    itemsize = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    rows = budget // (LIVE_BUFFERS * max(n_contrast, 1) * itemsize)
    return int(min(max(rows, 1), max(n_anchors, 1)))


def prefer_blockwise(n_rows: int, device: torch.device) -> bool:
    """Whether the blockwise path is faster than the plain autograd reference for ``n_rows``.

    CPU (benchmarks/bench_losses.py, D = 128, AFCL gamma = 2, eta = 50, forward + backward,
    medians of 15 interleaved runs, 1 thread; 2 threads gave the same order):

        N          16     64     128    256    512    4096
        reference  0.45   0.58   0.93   3.0    12.0   ~1300 ms
        blockwise  0.61   0.70   0.95   2.0    6.8    ~320 ms

    so the crossover is at about 128 rows (per-block Python overhead against N^2 temporaries).
    CUDA: not measured (no GPU where this was written). The reference is a dozen large kernels
    there and its N x N temporaries only start to matter (hundreds of MiB) from a few thousand
    rows; the blockwise path is chosen from CUDA_MIN_ROWS on. Measure with
    ``python benchmarks/bench_losses.py --device cuda`` and adjust.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return n_rows >= CUDA_MIN_ROWS
    return n_rows >= CPU_MIN_ROWS


CPU_MIN_ROWS = 192
CUDA_MIN_ROWS = 2048
