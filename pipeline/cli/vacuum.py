"""``filterlens vacuum``: remove files no committed model refers to, once older than a retention period."""

from __future__ import annotations

import argparse
import re

from pipeline.errors import ConfigError

HELP = """\
Writers never delete: a re-extracted model's previous files, and the files of
writes that crashed or lost a race, stay until vacuum removes them, so readers
that opened the dataset earlier can finish on their snapshot. vacuum deletes the
layers/filters files no committed models row refers to, and leftover temp files,
once they are older than --older-than (default 24h: longer than any reader runs).

examples:
  filterlens vacuum dataset/ --dry-run
  filterlens vacuum s3://bucket/filters --older-than 7d
  filterlens vacuum dataset/ --migrate-layout   # move models of the old dataset=/model= folders first

exit codes: 0 done, 2 bad usage, 4 dataset or storage error
"""

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ConfigError(f"--older-than {text!r}: give a duration such as 90s, 30m, 24h or 7d")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("vacuum", help="remove unreferenced files older than a retention",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset root (directory or URI)")
    p.add_argument("--older-than", default="24h", help="retention: only files unreferenced and older than this "
                                                       "(90s, 30m, 24h, 7d; default 24h)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--migrate-layout", action="store_true",
                   help="first move models written in the old Hive folders (dataset=<d>/model=<slug>/) to the flat "
                        "layout that pandas and pyarrow read by default (copies, then commits; no re-extraction)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.dataset.store import DatasetStore

    store = DatasetStore(args.dataset)
    store.require()
    if args.migrate_layout:
        from pipeline.dataset.migrate import migrate_model, old_layout_models

        old = old_layout_models(store)
        if args.dry_run:
            for model_id in old:
                print(f"would move {model_id} to the flat layout")
        else:
            moved = [m for m in old if migrate_model(store, m)]
            print(f"moved {len(moved)} of {len(old)} old-layout models to the flat layout")
    paths = store.vacuum(parse_duration(args.older_than), dry_run=args.dry_run)
    for path in paths:
        print(path)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(paths)} unreferenced files older than {args.older_than}")
    return 0
