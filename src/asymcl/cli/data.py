"""``asymcl data summary`` and ``asymcl data download``."""

from __future__ import annotations

import argparse
import json


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
    _add_spec_options(summary)
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.set_defaults(func=run_summary)

    download = data_sub.add_parser(
        "download",
        help="download a dataset from its official location (verified by md5)",
    )
    from asymcl.data.spec import downloadable  # torch-free: the dataset table only

    download.add_argument("name", choices=downloadable(), help="a dataset whose entry declares a download")
    download.add_argument("--root", required=True, help="folder to write the files to")
    download.add_argument("--base-url", default=None, help="mirror to use instead of the official URL")
    download.add_argument("--timeout", type=float, default=60.0, help="seconds per network read")
    download.set_defaults(func=run_download)


def _add_spec_options(parser: argparse.ArgumentParser) -> None:
    """One ``--<field>`` per :class:`asymcl.data.DataSpec` field that carries CLI metadata, with
    the field's own help text (the one the run config's ``data.*`` errors show).

    Values default to None here (not to the DataSpec's values) so that the spec's own defaults
    apply and `data summary` shows the same splits as training.
    """
    from dataclasses import fields

    from asymcl.data.spec import DATASETS, DataSpec

    for spec_field in fields(DataSpec):
        cli = spec_field.metadata.get("cli")
        if cli is None:
            continue
        kwargs = {"help": spec_field.metadata["help"]}
        if spec_field.name == "dataset":
            kwargs["choices"] = list(DATASETS)
        elif spec_field.name == "seed":
            kwargs["default"] = spec_field.default
        for key in ("metavar", "type"):
            if cli[key] is not None:
                kwargs[key] = cli[key]
        if cli["required"]:
            kwargs["required"] = True
        parser.add_argument("--" + spec_field.name.replace("_", "-"), **kwargs)


def run_summary(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from asymcl.data import DataSpec, build_splits

    # None: the data layer's own default, so that summary and training show the same splits.
    given = {f.name: getattr(args, f.name) for f in fields(DataSpec) if f.metadata.get("cli")}
    spec = DataSpec(**{name: value for name, value in given.items() if value is not None})
    splits = build_splits(spec)
    counts = splits.counts()
    if args.json:
        print(json.dumps({"dataset": args.dataset, "classes": splits.classes, "splits": counts}))
        return 0
    first = next(iter(splits.splits.values()))
    print(f"dataset: {args.dataset}" + (f"  root: {args.root}" if args.root else ""))
    print(f"imbalance: {splits.profile or 'none'}  seed: {args.seed}  image shape (C,H,W): {first.image_shape}")
    for note in splits.notes:
        print(f"  {note}")
    names = list(counts)
    label_width = max(len("class"), *(len(f"{k} {c}") for k, c in enumerate(splits.classes)))
    widths = [max(len(n), 6) for n in names]
    print("class".ljust(label_width) + "".join(f"  {n:>{w}}" for n, w in zip(names, widths, strict=True)))
    for k, name in enumerate(splits.classes):
        cells = "".join(f"  {counts[s][name]:>{w}}" for s, w in zip(names, widths, strict=True))
        print(f"{k} {name}".ljust(label_width) + cells)
    totals = "".join(f"  {sum(counts[s].values()):>{w}}" for s, w in zip(names, widths, strict=True))
    print("total".ljust(label_width) + totals)
    return 0


def run_download(args: argparse.Namespace) -> int:
    from asymcl.data.spec import DATASETS

    results = DATASETS[args.name].fetch(args.root, base_url=args.base_url, timeout=args.timeout)
    for name, status in results:
        print(f"{status:>10}  {name}")
    return 0
