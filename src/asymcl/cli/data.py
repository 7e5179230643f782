"""``asymcl data summary`` and ``asymcl data download``."""

from __future__ import annotations

import argparse
import json

DATASET_CHOICES = ("fashion-mnist", "isic2018", "npz", "folder", "csv", "digits")


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect and fetch datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    summary = data_sub.add_parser(
        "summary",
        help="class names and per-split class counts (after the imbalance profile)",
        description=(
            "Load a dataset the way training does and print its classes and per-split class "
            "counts. Train and val together hold exactly the imbalance profile's counts; "
            "test_imbalanced is the test set cut to the same profile."
        ),
    )
    summary.add_argument("--dataset", required=True, choices=DATASET_CHOICES)
    summary.add_argument(
        "--root",
        default=None,
        help="folder (fashion-mnist, isic2018, folder) or file (npz, csv); not needed for digits",
    )
    summary.add_argument(
        "--imbalance",
        default=None,
        metavar="PROFILE",
        help="exp:RHO, step:RHO or binary:RHO, optionally :NMAX (e.g. exp:100, binary:50)",
    )
    summary.add_argument(
        "--classes",
        default=None,
        metavar="IDS",
        help="comma-separated class ids or names to keep, in profile order (e.g. 0,6)",
    )
    summary.add_argument("--seed", type=int, default=0)
    summary.add_argument("--val-fraction", type=float, default=None,
                         help="validation share of the training pool (default: 0.2)")
    summary.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="share carved out as test when the source has no test split",
    )
    summary.add_argument("--image-size", type=int, default=None, help="resize to this square size")
    summary.add_argument(
        "--csv-path-column",
        default=None,
        metavar="NAME",
        help="csv: the image path column (default: the first of path, image, file, filename, ...)",
    )
    summary.add_argument(
        "--csv-label-column",
        default=None,
        metavar="NAME",
        help="csv: the label column (default: the first of label, class, target, y, category)",
    )
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.set_defaults(func=run_summary)

    download = data_sub.add_parser(
        "download",
        help="download a dataset from its official location (verified by md5)",
    )
    download.add_argument("name", choices=("fashion-mnist",))
    download.add_argument("--root", required=True, help="folder to write the files to")
    download.add_argument("--base-url", default=None, help="mirror to use instead of the official URL")
    download.add_argument("--timeout", type=float, default=60.0, help="seconds per network read")
    download.set_defaults(func=run_download)


def run_summary(args: argparse.Namespace) -> int:
    from asymcl.data import DataSpec, build_splits

    spec = DataSpec(
        dataset=args.dataset,
        root=args.root,
        imbalance=args.imbalance,
        classes=args.classes,
        seed=args.seed,
        # None: the data layer's own defaults, so that summary and training show the same splits.
        **{name: getattr(args, name) for name in ("val_fraction", "test_fraction")
           if getattr(args, name) is not None},
        image_size=args.image_size,
        csv_path_column=args.csv_path_column,
        csv_label_column=args.csv_label_column,
    )
    splits = build_splits(spec)
    counts = splits.counts()
    if args.json:
        print(json.dumps({"dataset": args.dataset, "classes": splits.classes, "splits": counts}))
        return 0
    first = next(iter(splits.splits.values()))
    print(f"dataset: {args.dataset}" + (f"  root: {args.root}" if args.root else ""))
    print(
        f"imbalance: {splits.profile or 'none'}  seed: {args.seed}  "
        f"image shape (C,H,W): {first.image_shape}"
    )
    for note in splits.notes:
        print(f"  {note}")
    names = list(counts)
    label_width = max(len("class"), *(len(f"{k} {c}") for k, c in enumerate(splits.classes)))
    widths = [max(len(n), 6) for n in names]
    print("class".ljust(label_width) + "".join(f"  {n:>{w}}" for n, w in zip(names, widths)))
    for k, name in enumerate(splits.classes):
        cells = "".join(f"  {counts[s][name]:>{w}}" for s, w in zip(names, widths))
        print(f"{k} {name}".ljust(label_width) + cells)
    totals = "".join(f"  {sum(counts[s].values()):>{w}}" for s, w in zip(names, widths))
    print("total".ljust(label_width) + totals)
    return 0


def run_download(args: argparse.Namespace) -> int:
    from asymcl.data.download import download_fashion_mnist

    results = download_fashion_mnist(args.root, base_url=args.base_url, timeout=args.timeout)
    for name, status in results:
        print(f"{status:>10}  {name}")
    return 0
