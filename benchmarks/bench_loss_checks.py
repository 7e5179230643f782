"""What the per-call checks of a loss module cost (issue 24, part 4: checks once).

    python benchmarks/bench_loss_checks.py [--sizes 8 64 512] [--repeats 200] [--threads 1]

For each batch size N (two views, D = 128, 10 classes, AFCL gamma = 2, eta = 50, on CPU), the
median time of one forward call of:

  afcl_loss        the functional form: checks the hyperparameters and the input on every call
  module           AsymmetricFocalContrastiveLoss: hyperparameters checked once, at construction;
                   the NaN/inf check of the features on every call
  validate_args=F  the same module built with validate_args=False: no NaN/inf check either

and the cost of one hyperparameter check alone (what a module call no longer pays). The three
are interleaved round-robin so that load from other processes hits them alike. The checks are a
fixed cost per call, so they matter for small batches (a memory queue's, a probe's) only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from asymcl.losses import AsymmetricFocalContrastiveLoss, afcl_loss
from asymcl.losses._validation import check_hyperparameters


def _median_us(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = dict(gamma=2.0, eta=50.0, temperature=0.1)
    checked = AsymmetricFocalContrastiveLoss(settings["gamma"], settings["eta"], temperature=0.1)
    unchecked = AsymmetricFocalContrastiveLoss(settings["gamma"], settings["eta"], temperature=0.1, validate_args=False)
    hyper = _median_us(lambda: check_hyperparameters(normalization="batch", **settings), args.repeats * 10)
    print(f"one hyperparameter check: {hyper:.1f} us   (torch {torch.__version__}, {args.threads} thread(s))")
    print(f"{'N':>6} {'afcl_loss':>12} {'module':>12} {'validate_args=F':>16}   (median us per forward call)")
    for n in args.sizes:
        generator = torch.Generator().manual_seed(n)
        features = torch.randn(n, 2, 128, generator=generator)
        labels = torch.randint(0, 10, (n,), generator=generator)
        calls = {
            "afcl_loss": lambda x=features, y=labels: afcl_loss(x, y, **settings),
            "module": lambda x=features, y=labels: checked(x, y),
            "unchecked": lambda x=features, y=labels: unchecked(x, y),
        }
        for fn in calls.values():  # warm-up
            fn()
        rounds = {name: [] for name in calls}
        for _ in range(10):  # round-robin
            for name, fn in calls.items():
                rounds[name].append(_median_us(fn, max(1, args.repeats // 10)))
        m = {name: statistics.median(values) for name, values in rounds.items()}
        print(f"{n:>6} {m['afcl_loss']:>12.1f} {m['module']:>12.1f} {m['unchecked']:>16.1f}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
