"""``filterlens zoo``: list or show the models of a zoo file or of the RobustBench catalog."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from pipeline.cli.build import add_zoo_filters
from pipeline.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("zoo", help="list or show the models of a zoo (file or robustbench)",
                              description="List or show the models of a zoo YAML file or of the built-in "
                                          "RobustBench catalog (nothing is downloaded).")
    sub = p.add_subparsers(dest="zoo_command", metavar="list|show", required=True)
    ls = sub.add_parser("list", help="one line per model")
    ls.add_argument("zoo", help="zoo YAML file, or 'robustbench'")
    add_zoo_filters(ls)
    ls.add_argument("--format", choices=("table", "yaml", "json"), default="table",
                    help="table, or yaml (a zoo file you can edit and build) or json")
    ls.set_defaults(func=run_list)
    show = sub.add_parser("show", help="every field of one model")
    show.add_argument("zoo", help="zoo YAML file, or 'robustbench'")
    show.add_argument("model", help="model id or name")
    show.add_argument("--model-info", help="RobustBench model_info (JSON lines or directory)")
    show.set_defaults(func=run_show)


def run_list(args: argparse.Namespace) -> int:
    from pipeline.build.plan import load_entries

    models = [m.strip() for m in args.models.split(",")] if args.models else None
    entries = load_entries(args.zoo, args.model_info, args.datasets, args.threat_models, models, args.limit)
    if args.format == "yaml":
        yaml.safe_dump({"name": args.zoo, "models": [e.to_yaml_dict() for e in entries]}, sys.stdout,
                       sort_keys=False, allow_unicode=True)
        return 0
    if args.format == "json":
        for e in entries:
            print(json.dumps(e.to_yaml_dict(), default=str))
        return 0
    header = f"{'id':<62} {'architecture':<24} {'robust':<6} {'clean':>6} {'robust_acc':>10} {'srcs':>4}"
    print(header)
    print("-" * len(header))
    for e in entries:
        print(f"{e.model_id:<62} {(e.architecture or e.arch or '')[:24]:<24} {str(e.robust):<6} "
              f"{_pct(e.clean_acc):>6} {_pct(e.robust_acc):>10} {len(e.sources):>4}")
    print(f"({len(entries)} models)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from pipeline.build.plan import load_entries

    entries = load_entries(args.zoo, args.model_info)
    matches = [e for e in entries if e.model_id == args.model or e.model_id.rsplit("/", 1)[-1] == args.model]
    if not matches:
        raise ConfigError(f"no model {args.model!r} in {args.zoo} (see filterlens zoo list {args.zoo})")
    yaml.safe_dump([e.to_yaml_dict() for e in matches], sys.stdout, sort_keys=False, allow_unicode=True)
    return 0


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
