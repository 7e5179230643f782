"""``asymcl claim``, ``asymcl claim-grid`` and ``asymcl levers``: the studies that answer a question over
many runs (issue 22: the paper's claim across imbalance ratios and batch sizes; issue 23: the levers
that lift ISIC 2018, and the same levers on Fashion-MNIST-LT), built on the sweeps of :mod:`asymcl.cli.experiments`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from asymcl.cli.options import WORKERS_HELP, command_line, name_list, seed_list, value_list, workers_option


def _rho(text: str) -> float | str:
    """A ``--rhos`` item: a ratio, or ``natural`` (the pool's own, for a grid with a natural pool)."""
    from asymcl.experiments.claim_presets import NATURAL

    return NATURAL if text.strip().lower() == NATURAL else float(text)


def _claim(args: argparse.Namespace) -> int:
    from asymcl.experiments.claim_grid import write_claim

    runs = Path(args.runs_dir)
    out = Path(args.out) if args.out else (runs / "claim" if runs.is_dir() else runs.parent / "claim")
    paths = write_claim(args.runs_dir, out)
    print(f"wrote {paths['md']}, {paths['csv']} and {paths['figure']}")
    return 0


def _claim_grid(args: argparse.Namespace) -> int:
    from asymcl.experiments.claim_presets import run_claim_grid

    out = Path(args.out) if args.out else Path("runs") / f"claim-grid-{args.profile}"
    command = command_line(
        "claim-grid",
        data=args.data,
        profile=args.profile,
        seeds=args.seeds,
        settings=args.settings,
        arms=args.arms,
        rhos=args.rhos,
        batches=args.batches,
        only_seeds=args.only_seeds,
        archive=args.archive,
        out=out,
        workers=workers_option(args),
    )
    result = run_claim_grid(
        args.data,
        out,
        profile=args.profile,
        seeds=args.seeds,
        budget=args.settings,
        rhos=value_list(args.rhos, "--rhos", _rho, "1,100 or 5,natural"),
        batches=value_list(args.batches, "--batches", int, "32,512"),
        arms=name_list(args.arms),
        only_seeds=seed_list(args.only_seeds),
        archive=args.archive,
        dry_run=args.dry_run,
        workers=args.workers,
        command=command,
    )
    if not args.dry_run:
        print(f"claim: {result['claim']['md']}")
    return 0


def _levers(args: argparse.Namespace) -> int:
    from asymcl.experiments.levers_run import run_levers
    from asymcl.experiments.preset_names import LEVERS_PRESETS

    out = Path(args.out) if args.out else Path("runs") / f"levers-{args.preset}"
    words = {key: getattr(args, key) for key in ("methods", "arms", "seeds", "archive")}
    # --preset left out at its default, like --workers: an ISIC command is recorded as it always was
    preset = args.preset if args.preset != LEVERS_PRESETS[0] else None
    command = command_line("levers", preset=preset, data=args.data, **words, out=out, workers=workers_option(args))
    lists: dict[str, Any] = {"methods": name_list(args.methods), "arms": name_list(args.arms), "seeds": args.seeds}
    options: dict[str, Any] = {"archive": args.archive, "workers": args.workers, "dry_run": args.dry_run}
    result = run_levers(args.data, out, preset=args.preset, **lists, **options, command=command)
    if not args.dry_run:
        print(f"levers: {result['table']['levers.md']}")
    return 1 if result.get("failed") else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from asymcl.experiments.preset_names import CLAIM_PROFILES, LEVERS_PRESETS  # torch-free: names only

    claim = subparsers.add_parser(
        "claim",
        help="the paper's claim across a grid: AFCL - CL, AFCL - FCL, ACL - CL per cell, with power",
        description="For every cell (imbalance profile x stage-1 batch size x arm, the arm being the folder a "
        "run sits in under RUNS_DIR), choose each method's setting on validation, pair the seeds, and "
        "write the differences with 95%% intervals, Holm-adjusted verdicts over the grid, the minimum "
        "detectable difference at 80%% power, and a figure against rho.",
    )
    claim.add_argument("runs_dir", metavar="RUNS_DIR", help="the grid's runs (searched recursively), or a runs.csv")
    claim.add_argument("--out", metavar="DIR", help="output folder (default: RUNS_DIR/claim)")
    claim.set_defaults(func=_claim)

    grid = subparsers.add_parser(
        "claim-grid",
        help="run the grid that answers the paper's claim on Fashion-MNIST or ISIC 2018, then `asymcl claim`",
        description="Fashion-MNIST with exp profiles rho in {1, 10, 50, 100, 200} (head capped at 1,000), or "
        "(--profile isic-pretrained) ISIC 2018 at its natural imbalance with the heads subsampled to "
        "cap:RHO, rho in {1, 5, 10, 20} and the pool's own ratio; stage-1 batch 32 and 512, 10 seeds; arms: "
        "every method tuned with the same budget, the authors' advice fixed (gamma 10, eta 300), and eta "
        "scaled with the batch size. Resumable.",
    )
    grid.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="the Fashion-MNIST IDX folder, or for isic-pretrained the ISIC 2018 Task 3 folder (official layout)",
    )
    grid.add_argument(
        "--profile",
        choices=CLAIM_PROFILES,
        default=CLAIM_PROFILES[0],
        help="pretrained: frozen Lite0 from the feature cache (default); quick: small CNN from scratch, "
        "rho 1 and 100 only; isic-pretrained: ISIC 2018 with reproduce isic2018's pretrained encoders "
        "(Lite2 + Lite0, 260 px)",
    )
    grid.add_argument("--seeds", type=int, metavar="N", help="seeds per cell (default 10)")
    grid.add_argument("--settings", type=int, metavar="N", help="settings per method in the tuned arms (default 2)")
    grid.add_argument(
        "--rhos",
        metavar="R,R",
        help="these imbalance ratios instead of the grid's (e.g. 100, or 5,natural for isic-pretrained)",
    )
    grid.add_argument("--batches", metavar="N,N", help="these stage-1 batch sizes instead of the grid's (e.g. 512)")
    grid.add_argument("--arms", metavar="A,B", help="only these arms (tuned, authors, eta-scaled-b32, ...)")
    grid.add_argument(
        "--only-seeds",
        metavar="S",
        help="run only these of the grid's seeds now (e.g. 0-2 or 3,4): a grid too long for one machine is "
        "run in parts; the claim is written over the runs finished so far",
    )
    grid.add_argument(
        "--archive",
        metavar="FILE.tar.xz",
        help="carry finished runs between machines: restore them from FILE first (if it exists), and write "
        "every finished run's config and metrics into it at the end (a few MB; resume with the same --data)",
    )
    grid.add_argument("--out", metavar="DIR", help="output folder (default runs/claim-grid-PROFILE)")
    grid.add_argument("--workers", type=int, default=1, metavar="N", help=WORKERS_HELP)
    grid.add_argument("--dry-run", action="store_true", help="print the arms' sweep files and run counts, and stop")
    grid.set_defaults(func=_claim_grid)

    levers = subparsers.add_parser(
        "levers",
        help="issue 23's lever ablation on ISIC 2018 (TTA, multi-layer features, last:K, size, encoder) or "
        "Fashion-MNIST-LT (TTA, multi-layer features, last:K), each against its reference over 3 seeds, then "
        "the levers validation keeps together; table in OUT/levers/",
    )
    levers.add_argument(
        "--preset",
        choices=LEVERS_PRESETS,
        default=LEVERS_PRESETS[0],
        help="the recipe the levers start from: asymcl reproduce PRESET --profile pretrained's (default isic2018: "
        "Lite2 + Lite0 at 260 px; fmnist-lt: Lite0, 28 px grey upsampled to 128 px, exp:100, no size or "
        "encoder arms)",
    )
    levers.add_argument(
        "--data",
        required=True,
        metavar="FOLDER",
        help="isic2018: the ISIC 2018 Task 3 folder, official layout; fmnist-lt: the Fashion-MNIST folder with "
        "the four official IDX files",
    )
    levers.add_argument("--out", metavar="DIR", help="output folder (default runs/levers-PRESET)")
    levers.add_argument("--methods", metavar="A,B,...", help="only these methods (default: the preset's)")
    levers.add_argument(
        "--arms",
        metavar="A,B",
        help="only these arms now (base, tta, layers, last1, last2, last3, their -lr0.1 and -bn-frozen forms, "
        "combined; isic2018 also tta-dihedral, lite0-224 and the size/encoder arms, fmnist-lt also tta-hflip: "
        "see --dry-run)",
    )
    levers.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="run seeds 0..N-1 of the arms named (default 3, the rule's minimum): more seeds narrow a gain's "
        "interval; finished seeds are kept, and each gain pairs the seeds both arms have",
    )
    levers.add_argument("--workers", type=int, default=1, metavar="N", help=WORKERS_HELP)
    levers.add_argument("--archive", metavar="FILE.tar.xz", help="carry finished runs between machines, as claim-grid")
    levers.add_argument("--dry-run", action="store_true", help="print each arm's sweep file, runs and cache disk")
    levers.set_defaults(func=_levers)
