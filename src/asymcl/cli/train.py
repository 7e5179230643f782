"""``asymcl train``, ``asymcl predict`` and ``asymcl demo``."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train one run (two-stage or ce baseline) into a run directory",
        description="Train and evaluate one run. Every option has a default: with no config this "
        "trains AFCL on the bundled digits dataset. Run the same command again to resume.",
    )
    train.add_argument("--config", help="YAML config file (nested sections or dotted keys)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set loss.gamma=2 (repeatable)",
    )
    train.add_argument("--out", help="run directory (default: runs/<method>-<config hash>)")
    train.set_defaults(func=_train)

    predict = subparsers.add_parser("predict", help="class probabilities for images from a finished run")
    predict.add_argument("--run", required=True, help="run directory made by asymcl train")
    predict.add_argument("--images", required=True, help="an image file or a folder of images")
    predict.add_argument("--out", help="CSV file to write (default: print the CSV)")
    # Checked by asymcl.training.predict (formats()): no torch import just to build --help.
    from asymcl.data.spec import DEFAULT_PREDICTIONS_FORMAT, submission_formats  # torch-free: the dataset table only

    predict.add_argument(
        "--format",
        default=DEFAULT_PREDICTIONS_FORMAT,
        help=f"{DEFAULT_PREDICTIONS_FORMAT}: path,pred,pred_class,prob_<class>...,image (default); or the submission "
        f"format of a dataset that has one: {', '.join(submission_formats()) or 'none'}",
    )
    predict.add_argument(
        "--tta",
        nargs="?",
        type=int,
        const=-1,
        default=None,
        metavar="N",
        help="average the probabilities over each image and N augmented views seeded as the run's "
        "(without N: the run's eval.tta_views), as the run's own evaluation with eval.tta_views",
    )
    predict.set_defaults(func=_predict)

    demo = subparsers.add_parser("demo", help="CE vs SupCon vs AFCL on long-tailed digits (offline, a few CPU minutes)")
    demo.add_argument("--out", default="runs/demo", help="folder for the three run directories")
    demo.add_argument("--imbalance", default="exp:20", help="training imbalance profile (default exp:20)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=60, help="stage-1/baseline epochs (stage 2: half)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)


def _train(args: argparse.Namespace) -> int:
    from asymcl.training.config import load_config_file, resolve_config
    from asymcl.training.pipeline import run
    from asymcl.training.run_dir import default_run_dir, is_main_process

    base = load_config_file(args.config) if args.config else None
    config = resolve_config(base, args.overrides)
    out = args.out or default_run_dir(config)
    metrics = run(config, out)
    # Under DDP Lightning re-launches this command once per extra process; only the first reports.
    if not is_main_process():
        return 0
    print(f"run directory: {out}")
    for split, values in metrics["final"].items():
        print(
            f"  {split:<16} WA {values['wa'] * 100:6.2f}%   UA {values['ua'] * 100:6.2f}%   "
            f"macro-F1 {values['macro_f1'] * 100:6.2f}%"
        )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from asymcl.training.predict import predict

    text = predict(args.run, args.images, args.out, fmt=args.format, tta=args.tta)
    if args.out:
        print(f"wrote {text.count(chr(10)) - 1} predictions to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from asymcl.training.config import resolve_config
    from asymcl.training.demo import run_demo

    resolve_config(None, {"data.imbalance": args.imbalance, "stage1.epochs": args.epochs})  # early check
    run_demo(args.out, imbalance=args.imbalance, seed=args.seed, epochs=args.epochs, progress_bar=not args.quiet)
    return 0
