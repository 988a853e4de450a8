"""``filterlens zoo``: list or show the models of a zoo file or of the RobustBench catalog; refresh its metadata."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from pipeline.cli.build import add_zoo_filters
from pipeline.cli.defaults import defaults_of
from pipeline.errors import ConfigError
from pipeline.zoo.refresh import RefreshOptions

REFRESH = defaults_of(RefreshOptions)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("zoo", help="list or show the models of a zoo (file or robustbench)",
                              description="List or show the models of a zoo YAML file or of the built-in "
                                          "RobustBench catalog (nothing is downloaded), or refresh the "
                                          "catalog's leaderboard metadata.")
    sub = p.add_subparsers(dest="zoo_command", metavar="list|show|refresh", required=True)
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
    refresh = sub.add_parser(
        "refresh", help="fetch RobustBench's current leaderboard metadata into the user cache",
        description="Fetch the leaderboard metadata (model_info JSON) of every installed RobustBench entry into "
                    "$FILTERLENS_CACHE or ~/.cache/filterlens (robustbench/model_info.jsonl); it then takes "
                    "precedence over the snapshot shipped with filterlens. Nothing changes unless every request "
                    "is answered (exit code 3 offline).")
    refresh.add_argument("--base-url", default=REFRESH.base_url,
                         help=f"the model_info/ folder to fetch from (default {REFRESH.base_url})")
    refresh.add_argument("--timeout", type=float, default=REFRESH.timeout_s,
                         help=f"seconds per request (default {REFRESH.timeout_s:g})")
    refresh.add_argument("--cache-dir", help="cache folder (default $FILTERLENS_CACHE or ~/.cache/filterlens)")
    refresh.set_defaults(func=run_refresh)


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
    ids = max([2, *(len(e.model_id) for e in entries)])
    arch = max([len("architecture"), *(len(e.architecture or "") for e in entries)])
    header = (f"{'id':<{ids}} {'architecture':<{arch}} {'threat':<11} {'robust':<6} {'clean':>6} {'robust_acc':>10} "
              f"{'srcs':>4}")
    print(header)
    print("-" * len(header))
    for e in entries:
        print(f"{e.model_id:<{ids}} {e.architecture or '':<{arch}} {e.threat_model:<11} {str(e.robust):<6} "
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


def run_refresh(args: argparse.Namespace) -> int:
    from pipeline.zoo.refresh import refresh_model_info
    from pipeline.zoo.robustbench import installed_keys

    options = RefreshOptions(base_url=args.base_url, timeout_s=args.timeout, cache_dir=args.cache_dir)
    result = refresh_model_info(installed_keys(), options)
    print(f"{result.fetched} leaderboard entries from {options.base_url} -> {result.path} (now used instead of the "
          f"shipped snapshot); {len(result.missing)} without metadata there"
          + (": " + ", ".join("/".join(k) for k in result.missing[:5]) + (", ..." if len(result.missing) > 5 else "")
             if result.missing else ""))
    return 0


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
