"""``asymcl sweep``, ``asymcl report``, ``asymcl reproduce`` and ``asymcl compare``: experiments over many
runs. The studies built on them (``claim``, ``claim-grid``, ``levers``) are in :mod:`asymcl.cli.studies`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asymcl.cli.options import WORKERS_HELP, command_line, name_list, workers_option
from asymcl.errors import ConfigError


def _run_comparison(args: argparse.Namespace, run: Callable[..., Any], *inputs: object, **options: object) -> int:
    """Run ``reproduce`` or ``compare`` (``run``) with the options both commands take alike, then exit as
    :func:`_finished` says (0 after a dry run, which has no result to speak of)."""
    result = run(*inputs, methods=name_list(args.methods), dry_run=args.dry_run, workers=args.workers, **options)
    return 0 if args.dry_run else _finished(result)


def _sweep(args: argparse.Namespace) -> int:
    from asymcl.experiments.sweep import expand, load_spec, run_sweep

    spec = load_spec(args.config)
    out = Path(args.out) if args.out else Path("runs") / spec.name
    if args.dry_run:
        from asymcl.experiments.sweep import default_resolver, resolve_points

        points = expand(spec)
        resolve_points(spec, points, default_resolver())  # a dry run also catches bad values
        for point in points:
            print(point.name)
        print(f"{len(points)} runs into {out}")
        return 0
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.optuna is not None:
        from asymcl.experiments.study import hide_password, run_study

        if args.workers != 1:
            raise ConfigError(
                "--workers splits a grid; for an Optuna study start several `asymcl sweep --optuna` "
                "processes on the same --storage instead (each with --threads)"
            )

        command = command_line(
            "sweep",
            config=args.config,
            out=out,
            optuna=args.optuna,
            storage=args.storage and hide_password(args.storage),
            sampler_seed=args.sampler_seed,
            heartbeat=args.heartbeat,
        )
        study = run_study(
            spec,
            out,
            args.optuna,
            storage=args.storage,
            sampler_seed=args.sampler_seed,
            command=command,
            heartbeat=args.heartbeat,
            db_wait=args.db_wait,
        )
        print(f"optuna storage: {study.storage}")
        for name, best in study.studies.items():
            if best["params"] is None:
                print(f"{name}: no finished trial")
            else:
                params = ", ".join(f"{k}={v:g}" for k, v in best["params"].items())
                print(f"{name}: best validation UA {best['val_ua']:.4f} at {params}")
        print(f"runs in {out}; next: asymcl report {out} --out {out / 'report'}")
        return 0
    if args.worker_label:  # started by another `asymcl sweep/reproduce --workers N`: it reports
        run_sweep(
            spec,
            out,
            command=command_line("sweep", config=args.config, out=out, threads=args.threads),
            label=args.worker_label,
        )
        return 0
    result = run_sweep(
        spec,
        out,
        command=command_line("sweep", config=args.config, out=out, workers=workers_option(args)),
        workers=args.workers,
    )
    print(f"{result.n_complete}/{result.total} runs complete in {out}")
    if result.failed:
        print(f"{len(result.failed)} failed (see {out / 'failures.log'}):")
        for name, message in result.failed.items():
            print(f"  {name}: {message}")
        return 1
    print(f"next: asymcl report {out} --out {out / 'report'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from asymcl.experiments.report import build_report

    out = Path(args.out) if args.out else Path(args.runs_dir) / "report"
    command = command_line("report", args.runs_dir, out=out, tsne_points=args.tsne_points)
    result = build_report(args.runs_dir, out, tsne_points=args.tsne_points, command=command)
    print(f"wrote {result.markdown}, {result.html} and {len(result.figures)} figures")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from asymcl.experiments.reproduce import reproduce

    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{args.preset}-{args.profile}"
    command = command_line(
        "reproduce",
        args.preset,
        data=args.data,
        profile=args.profile,
        out=out,
        methods=args.methods,
        settings=args.settings,
        workers=workers_option(args),
    )
    return _run_comparison(
        args, reproduce, args.preset, args.data, out, profile=args.profile, command=command, budget=args.settings
    )


def _finished(result) -> int:
    """A comparison's last line: where its report is; exit 1 when a run failed."""
    if result.report is not None:
        print(f"report: {result.report.markdown}")
    return 1 if result.sweep.failed else 0


def _compare(args: argparse.Namespace) -> int:
    from asymcl.experiments.compare import compare, default_out
    from asymcl.training.config import load_config_file, parse_overrides

    overrides = {**(load_config_file(args.config) if args.config else {}), **parse_overrides(args.set or [])}
    out = Path(args.out) if args.out else default_out(overrides, args.profile)
    command = command_line(
        "compare",
        *[f"--set={item}" for item in args.set or []],
        config=args.config,
        profile=args.profile,
        methods=args.methods,
        settings=args.settings,
        seeds=args.seeds,
        out=out,
        workers=workers_option(args),
    )
    return _run_comparison(
        args,
        compare,
        overrides,
        out,
        profile=args.profile,
        settings=args.settings,
        seeds=args.seeds,
        budget=args.budget,
        yes=args.yes,
        command=command,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    from asymcl.experiments.preset_names import (  # torch-free: names only
        COMPARE_PROFILES,
        PRESETS,
        PROFILES,
    )

    sweep = subparsers.add_parser(
        "sweep",
        help="run a grid of runs (or an Optuna study) from a sweep YAML file",
        description="Run every point of a sweep file's grid as a normal run directory. Run the same "
        "command again to continue an interrupted sweep: finished runs are skipped.",
    )
    sweep.add_argument(
        "--config",
        required=True,
        metavar="SWEEP.yaml",
        help="sweep file: base (a run config) and grid (dotted key -> list of values)",
    )
    sweep.add_argument("--out", metavar="DIR", help="sweep directory (default: runs/<sweep name>)")
    sweep.add_argument(
        "--optuna",
        type=int,
        metavar="N_TRIALS",
        help="instead of the grid, run N_TRIALS TPE trials per method/setting over gamma/eta "
        "(the total across machines sharing --storage)",
    )
    sweep.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL (default: sqlite:///DIR/optuna.db); share it between machines",
    )
    sweep.add_argument(
        "--sampler-seed",
        type=int,
        default=0,
        metavar="SEED",
        help="TPE sampler seed (give each machine of a shared study a different one)",
    )
    sweep.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="SECONDS",
        help="with --optuna: a running trial's heartbeat interval; a trial silent for 4 "
        "heartbeats (its worker died) is retried by another worker (default 30)",
    )
    sweep.add_argument(
        "--db-wait",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="with --optuna: how long to keep retrying an unreachable database before stopping (default 600)",
    )
    sweep.add_argument("--workers", type=int, default=1, metavar="N", help=WORKERS_HELP)
    sweep.add_argument(
        "--threads", type=int, metavar="K", help="torch CPU threads of this process (default: torch's, one per core)"
    )
    sweep.add_argument("--worker-label", help=argparse.SUPPRESS)
    sweep.add_argument("--dry-run", action="store_true", help="list the run names and stop")
    sweep.set_defaults(func=_sweep)

    report = subparsers.add_parser(
        "report",
        help="tables, paired comparisons and figures from finished runs",
        description="Write report.md, report.html, report.json and PNG figures for every finished "
        "run under RUNS_DIR. Hyperparameters are chosen per method on validation UA.",
    )
    report.add_argument("runs_dir", metavar="RUNS_DIR", help="directory holding run directories (searched recursively)")
    report.add_argument("--out", metavar="DIR", help="report directory (default: RUNS_DIR/report)")
    report.add_argument(
        "--tsne-points",
        type=int,
        default=1000,
        metavar="N",
        help="test points per t-SNE panel (subsampled; default 1000)",
    )
    report.set_defaults(func=_report)

    reproduce = subparsers.add_parser(
        "reproduce",
        help="run a benchmark protocol (sweep + report) on real data",
        description="Run the protocol of the benchmark (docs/usage-experiments.md lists the grids), "
        "then the report. Re-run the same command to continue after an interruption.",
    )
    reproduce.add_argument("preset", choices=PRESETS)
    reproduce.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="Fashion-MNIST IDX folder; for isic2018 the official folder or a .npz",
    )
    reproduce.add_argument(
        "--profile",
        choices=PROFILES,
        default="quick",
        help="quick: a small grid on CPU (with --workers 2 on 2 cores: 31-34 min for Fashion-MNIST, ~47 for isic2018); full: the whole grid, for a GPU; "
        "pretrained: frozen ImageNet EfficientNet-Lite (Lite2+Lite0 at 260 px for isic2018, Lite0 for "
        "fmnist-lt) + adapter from the feature cache, every method, on CPU (isic2018 official "
        "folder, fmnist-lt; with --workers 2 on 2 cores: ~60 min for isic2018 and fmnist-lt with the extraction, ~20 and ~11 min after); "
        "gpu: one short GPU window (benchmarks/gpu/run.sh): Lite0 fine-tuned at 224 px, "
        "CE/LA/SupCon/AFCL, 2 seeds (isic2018 official folder, fmnist-lt)",
    )
    reproduce.add_argument("--out", metavar="DIR", help="output directory (default: runs/reproduce-PRESET-PROFILE)")
    reproduce.add_argument("--workers", type=int, default=1, metavar="N", help=WORKERS_HELP)
    reproduce.add_argument(
        "--methods",
        metavar="A,B,...",
        help="the methods to compare instead of the profile's table (a plugin's method by name)",
    )
    reproduce.add_argument(
        "--settings",
        type=int,
        metavar="N",
        help="validation-scored settings per method instead of the profile's budget (the same for all)",
    )
    reproduce.add_argument("--dry-run", action="store_true", help="print the sweep file and stop")
    reproduce.set_defaults(func=_reproduce)

    compare = subparsers.add_parser(
        "compare",
        help="the fair comparison of every method on your own data (sweep + report)",
        description="Compare every method on a dataset given with the usual --set data.* keys, under the "
        "protocol of the benchmark presets: the same number of validation-scored settings, the same "
        "classifier input, epochs and levers for every method, the practitioner's baselines as rows, "
        "Holm-adjusted verdicts. Prints the run count and an estimated time first; re-run the same "
        "command to continue after an interruption.",
    )
    compare.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a config key, e.g. data.dataset=folder, data.root=PATH (repeatable)",
    )
    compare.add_argument("--config", metavar="FILE.yaml", help="a YAML file of config keys (before --set)")
    compare.add_argument(
        "--profile",
        choices=COMPARE_PROFILES,
        default="quick",
        help="quick: a small CNN from scratch at 64 px; pretrained: frozen ImageNet EfficientNet-Lite0 "
        "at 224 px + adapter from the feature cache, with the probe (default quick)",
    )
    compare.add_argument("--methods", metavar="A,B,...", help="the methods to compare (default: the profile's table)")
    compare.add_argument(
        "--settings",
        type=int,
        default=2,
        metavar="N",
        help="validation-scored settings per method, the same for every method (default 2)",
    )
    compare.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds, each its own split (default 3)")
    compare.add_argument(
        "--budget",
        default="30m",
        metavar="DURATION",
        help="time budget, e.g. 30m or 2h: a plan estimated over it needs --yes (default 30m)",
    )
    compare.add_argument("--yes", action="store_true", help="run even when the estimate is over --budget")
    compare.add_argument("--out", metavar="DIR", help="output directory (default: runs/compare-NAME-PROFILE)")
    compare.add_argument("--workers", type=int, default=1, metavar="N", help=WORKERS_HELP)
    compare.add_argument("--dry-run", action="store_true", help="print the comparison's sweep file and runs, and stop")
    compare.set_defaults(func=_compare)
