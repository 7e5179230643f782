"""``asymcl cache list|verify|prune|size|build``: the feature cache, looked after and filled."""

from __future__ import annotations

import argparse
import json
import sys
import time

_WHERE = (
    "feature cache folder (default: data.cache_dir of a config, else $ASYMCL_CACHE_DIR/features, "
    "else ~/.cache/asymcl/features)"
)


def register(subparsers) -> None:
    cache = subparsers.add_parser(
        "cache",
        help="list, verify, prune or fill the feature cache",
        description="The feature cache holds a frozen encoder's outputs (clean images and augmented "
        "views), shared by every run with the same key. Move it by moving the folder and setting "
        "ASYMCL_CACHE_DIR (or data.cache_dir).",
    )
    sub = cache.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    cache.set_defaults(func=lambda args: (cache.print_help(), 2)[1])

    listing = sub.add_parser("list", help="each entry: encoder, image size, views, dataset, images, size, last use")
    listing.add_argument("--json", action="store_true", help="print one JSON list")
    listing.set_defaults(func=_list)
    check = sub.add_parser("verify", help="re-hash every shard and report damaged ones (exit status 1 if any)")
    check.set_defaults(func=_verify)
    prune = sub.add_parser("prune", help="delete entries not used for a while, or one entry; entries in use are kept")
    prune.add_argument("--older-than", metavar="AGE", help="last used more than AGE ago: 30d, 12h, 90m, 2w")
    prune.add_argument("--key", help="the entry whose key starts with this (see `asymcl cache list`)")
    prune.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    prune.set_defaults(func=_prune)
    size = sub.add_parser("size", help="bytes on disk: feature entries and decoded images")
    size.set_defaults(func=_size)
    build = sub.add_parser(
        "build",
        help="extract the feature caches a run config needs, without training",
        description="Fill the cache before a sweep. Under torchrun (or srun with the torch environment) "
        "every process extracts its own part: torchrun --nproc_per_node=N --no-python asymcl cache build "
        "--set ...; with trainer.devices=N (N > 1) Lightning's launcher starts the N processes itself.",
    )
    build.add_argument("--config", help="YAML config file (nested sections or dotted keys)")
    build.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable), as for asymcl train",
    )
    build.set_defaults(func=_build)
    for parser in (listing, check, prune, size):
        parser.add_argument("--cache-dir", help=_WHERE)


def _root(args):
    from asymcl.data.cache_admin import cache_root

    return cache_root(args.cache_dir)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _ago(stamp: float) -> str:
    seconds = max(0.0, time.time() - stamp)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _list(args: argparse.Namespace) -> int:
    from asymcl.data.cache_admin import list_entries

    root = _root(args)
    entries = list_entries(root)
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=1))
        return 0
    if not entries:
        print(f"no feature cache entries in {root}")
        return 0
    rows = [("key", "encoder", "image", "views", "dataset", "images", "size", "last use")]
    rows += [
        (e.key, e.encoder, e.image_size, str(e.views), e.dataset, str(e.images), _mb(e.bytes), _ago(e.last_used))
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"{len(entries)} entries, {_mb(sum(e.bytes for e in entries))} in {root}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from asymcl.data.cache_admin import verify

    root = _root(args)
    checked, damaged = verify(root)
    for path, why in damaged:
        print(f"damaged: {path}: {why}")
    print(f"{checked} shards checked in {root}, {len(damaged)} damaged")
    return 1 if damaged else 0


def _prune(args: argparse.Namespace) -> int:
    from asymcl.data.cache_admin import parse_age, prune, select
    from asymcl.errors import DataError

    if args.older_than is None and args.key is None:
        raise DataError("cache prune needs --older-than AGE (e.g. 30d) or --key KEY; nothing was deleted")
    root = _root(args)
    chosen = select(root, parse_age(args.older_than) if args.older_than else None, args.key)
    if args.dry_run:
        for entry in chosen:
            print(
                f"would delete {entry.key} ({entry.encoder}, {entry.dataset}, {_mb(entry.bytes)}, "
                f"last used {_ago(entry.last_used)})"
            )
        return 0
    removed, skipped = prune(chosen)
    for entry in removed:
        print(f"deleted {entry.key} ({entry.encoder}, {entry.dataset}, {_mb(entry.bytes)})")
    for entry, why in skipped:
        print(f"kept {entry.key}: {why}")
    print(f"{len(removed)} entries deleted ({_mb(sum(e.bytes for e in removed))}), {len(skipped)} kept in use")
    return 0


def _size(args: argparse.Namespace) -> int:
    from asymcl.data.cache_admin import decoded_root, sizes

    root = _root(args)
    found = sizes(root)
    print(f"features  {_mb(found['features']):>12}  {root}")
    print(f"decoded   {_mb(found['decoded']):>12}  {decoded_root()}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from asymcl.training.config import load_config_file, resolve_config
    from asymcl.training.distributed_cache import build_caches

    base = load_config_file(args.config) if args.config else None
    config = resolve_config(base, args.overrides)
    built = build_caches(config)
    if built is not None:
        print(f"feature caches ready in {built}", file=sys.stderr)
    return 0
