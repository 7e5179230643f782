"""Forward+backward time and peak memory of the AFCL loss: dense autograd vs asymcl's two paths.

    python benchmarks/bench_losses.py [--sizes 256 1024 4096 16384 32768] [--device cpu|cuda]

Implementations, all on the same (N, D) features and labels, AFCL with gamma = 2, eta = 50,
tau = 0.07, "batch" normalisation (the authors' scale):

  dense      a straightforward autograd version of the formula, computed the way the authors'
             release computes it: full N x N matrices, exp of the logits without subtracting the
             row maximum, log(1 - p) taken directly. Written here from method.md section 1.
  reference  asymcl's plain autograd path (afcl_loss(..., impl="reference"): stable, still N x N).
  blockwise  asymcl's row-blocked path with the analytic backward (impl="blockwise").
  matmul     the unavoidable work, no loss at all: the three N x N x D products of a forward and
             backward (S = Z Z^T, dS Z, dS^T Z), in the same row blocks as the blockwise path.

Time: median of --repeats forward+backward passes after one warm-up, the implementations
interleaved round-robin inside one process so that load from other processes on a shared machine
hits them alike (CUDA: cuda events around each pass). Peak memory on CPU: each (implementation, N) runs once more in
a fresh subprocess, which initialises torch and its kernels on a tiny batch, builds the inputs,
reads its resident set size, runs one forward+backward and reports ru_maxrss minus that baseline:
the extra memory the pass needed at its peak (tracemalloc cannot see torch's allocations). On CUDA,
torch.cuda.max_memory_allocated minus the allocation before the pass, in the same process (the
allocator's counter is exact; an implementation that runs out of memory is reported, not fatal).

An implementation is skipped at sizes where its estimated peak (bytes per N^2 entry, from the
measured small sizes, times N^2) exceeds --memory-limit-gib; the table says so.

--memory-runs R: memory only, no timing. Every (implementation, N) is measured in R fresh
processes, the implementations alternating (dense run 1, blockwise run 1, dense run 2, ...) so
that a change in the machine's state hits both; the table gives the median peak with its range
and the ratio to blockwise of each pair of runs (median and range). One process's figure can be
off by tens of MiB (allocator and page-cache state), which a single run cannot show.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from asymcl.losses import _blockwise
from asymcl.losses.functional import afcl_loss

GAMMA, ETA, TEMPERATURE, NORMALIZATION, N_CLASSES = 2.0, 50.0, 0.07, "batch", 10

# Bytes per N^2 entry of the N x N implementations' peak (float32), used only to decide whether a
# size is safe to run; measured at N = 4096 on CPU (see benchmarks/README.md) and rounded up.
ESTIMATED_BYTES_PER_PAIR = {"dense": 64, "reference": 64}


def dense_autograd_afcl(features, labels, gamma, eta, temperature):
    """AFCL the way the authors' release computes it (no max subtraction, log(1 - p) directly)."""
    z = F.normalize(features, dim=1)
    n = z.shape[0]
    logits = z @ z.T / temperature
    not_self = 1.0 - torch.eye(n, device=z.device, dtype=z.dtype)
    exp_logits = torch.exp(logits) * not_self
    denominator = exp_logits.sum(dim=1, keepdim=True)
    p = exp_logits / denominator
    log_p = logits - torch.log(denominator)
    same_class = (labels[:, None] == labels[None, :]).to(z.dtype)
    pos_mask = same_class * not_self
    neg_mask = not_self - pos_mask
    pos = -(torch.pow(1.0 - p, gamma) * log_p * pos_mask).sum(dim=1)
    neg = -(torch.log(1.0 - p) * neg_mask).sum(dim=1)
    return (pos / n + eta * neg / n).mean()


def asymcl_afcl(impl):
    def loss(features, labels, gamma, eta, temperature):
        return afcl_loss(
            features, labels, gamma=gamma, eta=eta, temperature=temperature, normalization=NORMALIZATION, impl=impl
        )

    return loss


def blockwise_with_block_size(block_size):
    """asymcl's blockwise core with a fixed block size (for --block-sizes sweeps)."""

    def loss(features, labels, gamma, eta, temperature):
        z = F.normalize(features, dim=1)
        n = z.shape[0]
        per_anchor = _blockwise.per_anchor_loss(
            z,
            z,
            torch.arange(n, device=z.device),
            anchor_labels=labels,
            contrast_labels=labels,
            mask=None,
            gamma=gamma,
            eta=eta,
            temperature=temperature,
            normalization=NORMALIZATION,
            n_total=n,
            block_size=block_size,
        )
        return per_anchor.sum() / n

    return loss


def blocked_matmuls(features, block):
    """The three N x N x D products of a forward+backward, row-blocked, nothing else."""
    z = features.detach()
    grad = torch.zeros_like(z)
    grad_rows = torch.empty_like(z)
    for start in range(0, z.shape[0], block):
        rows = z[start : start + block]
        s = rows @ z.T
        torch.mm(s, z, out=grad_rows[start : start + block])
        grad.addmm_(s.T, rows)
    return grad


IMPLEMENTATIONS = {
    "dense": dense_autograd_afcl,
    "reference": asymcl_afcl("reference"),
    "blockwise": asymcl_afcl("blockwise"),
}


def make_inputs(n, dim, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=g).to(device).requires_grad_()
    labels = torch.randint(0, N_CLASSES, (n,), generator=g).to(device)
    return features, labels


def matmul_block(n, device):
    return _blockwise.auto_block_size(n, n, torch.device(device), torch.float32)


def implementation(name):
    if name.startswith("blockwise[b="):
        return blockwise_with_block_size(int(name[len("blockwise[b=") : -1]))
    return IMPLEMENTATIONS[name]


def one_pass(name, features, labels, device):
    if name == "matmul":
        blocked_matmuls(features, matmul_block(features.shape[0], device))
        return
    features.grad = None
    loss = implementation(name)(features, labels, GAMMA, ETA, TEMPERATURE)
    loss.backward()


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed_pass(name, features, labels, device):
    if device == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        one_pass(name, features, labels, device)
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1000.0
    t0 = time.perf_counter()
    one_pass(name, features, labels, device)
    return time.perf_counter() - t0


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_freed_heap():
    """Give freed malloc memory back to the OS, so that it cannot hide the next pass's peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_memory(name, n, dim, device):
    """Extra memory of one forward+backward at its peak (run this in a fresh process on CPU).

    A warm-up pass (at min(N, 1024)) first loads kernels, code pages and thread pools; its freed
    memory is returned to the OS; the high-water mark is reset to the current RSS; then the
    measured pass runs and the high-water mark minus the RSS before it is its extra memory.
    """
    warm_f, warm_l = make_inputs(min(n, 1024), dim, device)
    one_pass(name, warm_f, warm_l, device)
    del warm_f, warm_l
    features, labels = make_inputs(n, dim, device)
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        one_pass(name, features, labels, device)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    _release_freed_heap()
    before = _status_bytes("VmRSS")
    if _reset_peak_rss():
        one_pass(name, features, labels, device)
        return _status_bytes("VmHWM") - before
    one_pass(name, features, labels, device)  # fall back to the process's all-time maximum
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def measure_memory_in_subprocess(name, n, args):
    if args.device == "cuda":
        # The caching allocator's own counter is exact and per process: no fresh process needed
        # (each would spend seconds initialising CUDA).
        try:
            return peak_extra_memory(name, n, args.dim, args.device), None
        except torch.OutOfMemoryError as error:
            torch.cuda.empty_cache()
            return None, f"out of memory: {str(error).splitlines()[0]}"
    cmd = [
        sys.executable,
        __file__,
        "--_memory-of",
        name,
        str(n),
        "--dim",
        str(args.dim),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"], None


def fmt_time(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def fmt_bytes(n_bytes):
    if n_bytes is None:
        return "-"
    return f"{n_bytes / 2**20:.0f} MiB" if n_bytes < 10 * 2**30 else f"{n_bytes / 2**30:.1f} GiB"


def run(args):
    device = args.device
    names = [name for name in ["dense", "reference", "blockwise", "matmul"] if name not in args.skip]
    names += [f"blockwise[b={block_size}]" for block_size in args.block_sizes]
    limit = args.memory_limit_gib * 2**30
    rows = []
    for n in args.sizes:
        active = []
        skipped = {}
        for name in names:
            per_pair = ESTIMATED_BYTES_PER_PAIR.get(name)
            if per_pair is not None and per_pair * n * n > limit:
                skipped[name] = f"skipped: needs ~{fmt_bytes(per_pair * n * n)} > limit"
            else:
                active.append(name)
        features, labels = make_inputs(n, args.dim, device)
        times = {name: [] for name in active}
        repeats = args.repeats if n <= args.single_repeat_above else 1
        for name in active:  # warm-up
            timed_pass(name, features, labels, device)
        for _ in range(repeats):
            for name in active:
                times[name].append(timed_pass(name, features, labels, device))
        del features, labels
        memory = {}
        for name in active:
            if args.no_memory:
                memory[name] = None
                continue
            peak, error = measure_memory_in_subprocess(name, n, args)
            if error is not None:
                skipped[name] = f"memory run failed: {error}"
            memory[name] = peak
        median = {name: statistics.median(times[name]) for name in active}
        fastest = {name: min(times[name]) for name in active}
        for name in names:
            if name in skipped and name not in median:
                rows.append((n, name, None, None, None, skipped[name]))
                continue
            note = []
            if "dense" in median and name != "dense":
                note.append(f"{median['dense'] / median[name]:.1f}x faster than dense")
                if memory.get("dense") and memory.get(name):
                    note.append(f"{memory[name] / memory['dense']:.3f} of its memory")
            if name == "blockwise" and "matmul" in median:
                note.append(f"{median['blockwise'] / median['matmul']:.2f}x the matmul floor")
            if name == "reference" and "blockwise" in median:
                note.append(f"blockwise {median['reference'] / median['blockwise']:.1f}x faster")
            if name in skipped:
                note.append(skipped[name])
            rows.append((n, name, median[name], fastest[name], memory.get(name), "; ".join(note)))
            print(
                f"  N={n} {name}: {fmt_time(median[name])} (min {fmt_time(fastest[name])}, "
                f"n={len(times[name])}), "
                f"peak {fmt_bytes(memory.get(name))}",
                file=sys.stderr,
                flush=True,
            )
    return rows


def memory_runs(args):
    """Peak extra memory of each implementation in --memory-runs fresh processes per size."""
    names = args.memory_impls
    print(
        f"device={args.device} threads={args.threads} D={args.dim} gamma={GAMMA} eta={ETA} "
        f"tau={TEMPERATURE} normalization={NORMALIZATION} torch={torch.__version__} "
        f"fresh processes per (implementation, N)={args.memory_runs}"
    )
    print()
    print("| N | implementation | peak extra memory, median | range | ratio to blockwise, median (range) |")
    print("|---:|---|---:|---:|---:|")
    for n in args.sizes:
        peaks = {name: [] for name in names}
        for run_index in range(args.memory_runs):
            for name in names:
                peak, error = measure_memory_in_subprocess(name, n, args)
                if error is not None:
                    raise SystemExit(f"N={n} {name} run {run_index + 1}: {error}")
                peaks[name].append(peak)
                print(f"  N={n} {name} run {run_index + 1}: {fmt_bytes(peak)}", file=sys.stderr, flush=True)
        for name in names:
            values = peaks[name]
            ratio = ""
            if name != "blockwise" and "blockwise" in peaks:
                paired = [a / b for a, b in zip(values, peaks["blockwise"], strict=True)]
                ratio = f"{statistics.median(paired):.1f}x ({min(paired):.1f}x to {max(paired):.1f}x)"
            print(
                f"| {n} | {name} | {fmt_bytes(statistics.median(values))} | "
                f"{fmt_bytes(min(values))} to {fmt_bytes(max(values))} | {ratio} |",
                flush=True,
            )


def print_table(rows, args):
    print(
        f"device={args.device} threads={args.threads} D={args.dim} gamma={GAMMA} eta={ETA} "
        f"tau={TEMPERATURE} normalization={NORMALIZATION} torch={torch.__version__}"
    )
    print()
    print("| N | implementation | fwd+bwd median | min | peak extra memory | ratios (medians) / notes |")
    print("|---:|---|---:|---:|---:|---|")
    for n, name, seconds, fastest, peak, note in rows:
        t = fmt_time(seconds) if seconds is not None else "-"
        t_min = fmt_time(fastest) if fastest is not None else "-"
        print(f"| {n} | {name} | {t} | {t_min} | {fmt_bytes(peak)} | {note} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384, 32768])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--single-repeat-above",
        type=int,
        default=8192,
        help="sizes above this are timed once after the warm-up (they take long)",
    )
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=6.0,
        help="skip an N x N implementation whose estimated peak exceeds this",
    )
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument(
        "--block-sizes", type=int, nargs="*", default=[], help="also time the blockwise core at these fixed block sizes"
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["dense", "reference", "blockwise", "matmul"],
        help="implementations to leave out",
    )
    parser.add_argument(
        "--memory-runs",
        type=int,
        default=0,
        help="memory only: measure each (implementation, N) in this many fresh processes",
    )
    parser.add_argument(
        "--memory-impls",
        nargs="+",
        default=["dense", "blockwise"],
        choices=["dense", "reference", "blockwise", "matmul"],
        help="implementations for --memory-runs",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--_memory-of", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    if args._memory_of:
        name, n = args._memory_of[0], int(args._memory_of[1])
        peak = peak_extra_memory(name, n, args.dim, args.device)
        print(json.dumps({"peak_bytes": peak}))
        return 0
    if args.memory_runs:
        memory_runs(args)
        return 0
    rows = run(args)
    print_table(rows, args)
    if args.json:
        write_json(args.json, rows, args)
    return 0


def write_json(path, rows, args):
    """The table's figures, machine-readable (seconds and bytes), with the setting they were taken in."""
    setting = {
        "device": args.device,
        "threads": args.threads,
        "dim": args.dim,
        "gamma": GAMMA,
        "eta": ETA,
        "temperature": TEMPERATURE,
        "normalization": NORMALIZATION,
        "torch": torch.__version__,
        "repeats": args.repeats,
    }
    if args.device == "cuda":
        setting["gpu"] = torch.cuda.get_device_name()
        setting["cuda"] = torch.version.cuda
        setting["block_budget_bytes"] = _blockwise.GPU_BLOCK_BUDGET_BYTES
    records = [
        {"n": n, "implementation": name, "median_s": median, "min_s": fastest, "peak_extra_bytes": peak, "note": note}
        for n, name, median, fastest, peak, note in rows
    ]
    with open(path, "w") as f:
        json.dump({"setting": setting, "rows": records}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
