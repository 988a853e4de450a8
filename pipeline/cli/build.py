"""``filterlens build``: a whole zoo into the filter dataset, on local Ray or a Ray cluster."""

from __future__ import annotations

import argparse

from pipeline.build.config import BuildConfig
from pipeline.cli.defaults import defaults_of
from pipeline.cli.probe_options import add_probe_options, check_probe_data, probe_config_of
from pipeline.errors import ConfigError

BUILD = defaults_of(BuildConfig)

HELP = """\
Build (or complete) the filter dataset at --out from a zoo: a zoo YAML file or
"robustbench" (every entry of the installed RobustBench model zoo).

Checkpoints are downloaded by parallel Ray tasks (resumed, retried, verified)
and extracted by Ray actors (one per GPU when the cluster has GPUs, else CPU
actors). A failed model is recorded in failures/ and the build goes on. Rerun
after any crash: complete models are skipped, partial ones redone, nothing is
duplicated. --dry-run lists what would be processed.

examples:
  filterlens build zoo.yaml --out dataset/
  filterlens build robustbench --dataset cifar10 --threat-model Linf --limit 5 --out s3://bucket/filters
  filterlens build zoo.yaml --out s3://bucket/filters --address http://head:8265   # as a Ray job

exit codes: 0 all models done or skipped, 3 some model failed (0 with --allow-failures), 2 bad usage
"""


def add_zoo_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", "--datasets", action="extend", nargs="+", dest="datasets", metavar="NAME",
                   help="only models trained on these datasets (repeatable; same flags as stats)")
    p.add_argument("--threat-model", "--threat-models", action="extend", nargs="+", dest="threat_models",
                   metavar="TM", help="only models of these threat models / leaderboards: Linf, L2, corruptions, "
                                      "none (repeatable; same flags as stats)")
    p.add_argument("--models", help="comma-separated model names or ids")
    p.add_argument("--limit", type=int, help="at most this many models")
    p.add_argument("--model-info", help="RobustBench model_info as a JSON-lines file or model_info/ directory "
                                        "(replaces the shipped snapshot and a `filterlens zoo refresh` cache)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("build", help="build the dataset from a whole zoo (Ray)", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("zoo", help="zoo YAML file, or 'robustbench'")
    p.add_argument("--out", required=True, help="dataset root: directory or URI (s3://bucket/path?endpoint_override=...)")
    add_zoo_filters(p)
    p.add_argument("--backend", choices=("ray", "local"), default=BUILD.backend,
                   help=f"ray (a local Ray instance, or --address) or local (in-process, no Ray); default {BUILD.backend}")
    p.add_argument("--address", help="Ray cluster: auto, ray://host:10001, or http://head:8265 to submit as a job")
    p.add_argument("--device", default=BUILD.device,
                   help=f"auto (GPU actors when the cluster has GPUs), cpu or cuda (default {BUILD.device})")
    p.add_argument("--extractors", type=int, help="number of extractor actors (default: one per GPU, or CPUs/2)")
    p.add_argument("--max-downloads", type=int, default=BUILD.max_downloads,
                   help=f"downloads in flight at once (default {BUILD.max_downloads})")
    p.add_argument("--mirror", help="URL prefix or directory that replaces every remote source "
                                    "(<mirror>/gdrive/<id>, <mirror>/http/<host>/<path>, ...)")
    p.add_argument("--cache-dir", help="where downloaded checkpoints go (default ~/.cache/filterlens/checkpoints)")
    p.add_argument("--cache-max-gb", type=float, help="disk budget of the checkpoint cache")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints after a successful extraction")
    p.add_argument("--retries", type=int, default=BUILD.retries,
                   help=f"attempts per model for transient errors (default {BUILD.retries})")
    p.add_argument("--timeout", type=float, default=BUILD.timeout_s,
                   help=f"download read timeout in seconds (default {BUILD.timeout_s:g})")
    p.add_argument("--max-checkpoint-gb", type=float, default=BUILD.max_checkpoint_gb,
                   help=f"refuse a checkpoint file larger than this, announced or streamed (default "
                        f"{BUILD.max_checkpoint_gb:g}; 0: no cap)")
    p.add_argument("--min-download-rate", type=float, default=BUILD.min_download_rate_kbs, metavar="KBS",
                   help=f"fail a download slower than this many KB/s over --rate-window (default "
                        f"{BUILD.min_download_rate_kbs:g}; 0: no minimum)")
    p.add_argument("--rate-window", type=float, default=BUILD.rate_window_s, metavar="S",
                   help=f"seconds over which --min-download-rate is measured (default {BUILD.rate_window_s:g})")
    p.add_argument("--download-deadline", type=float, default=BUILD.download_deadline_s, metavar="S",
                   help=f"fail a model whose download (all files, all attempts) takes longer (default "
                        f"{BUILD.download_deadline_s:g}; 0: none)")
    p.add_argument("--drive-downloads", type=int, default=BUILD.drive_downloads, metavar="N",
                   help=f"Google Drive downloads at once per process, to stay under Drive's quota (default "
                        f"{BUILD.drive_downloads}; 0: no limit)")
    p.add_argument("--stall-timeout", type=float, default=BUILD.stall_timeout_s,
                   help=f"report when nothing finishes for this many seconds (default {BUILD.stall_timeout_s:g})")
    p.add_argument("--extract-timeout", type=float, default=BUILD.extract_timeout_s,
                   help=f"seconds one model's extraction may take (0: no limit; default {BUILD.extract_timeout_s:g})")
    p.add_argument("--trust-zoo-code", action="store_true",
                   help="run the Python code that zoo entries name as module:factory architectures (refused "
                        "otherwise; or allow modules with FILTERLENS_TRUSTED_MODULES=a,b)")
    add_probe_options(p, flag=True)
    p.add_argument("--force", action="store_true", help="redo models that are already complete")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when some models failed")
    p.add_argument("--dry-run", action="store_true", help="list what would be processed and skipped, do nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.build.plan import load_entries, plan
    from pipeline.build.zoo_build import build_zoo
    from pipeline.dataset.store import DatasetStore
    from pipeline.zoo.trust import require_consent

    models = [m.strip() for m in args.models.split(",")] if args.models else None
    if args.address and args.address.startswith("http"):
        from pipeline.build.job_submit import submit_build_job

        argv = _drop_option(args.argv[args.argv.index("build") + 1:], "--address")
        return submit_build_job(args.address, argv, args.zoo)
    if args.dry_run:
        entries = load_entries(args.zoo, args.model_info, args.datasets, args.threat_models, models, args.limit)
        require_consent(entries, args.trust_zoo_code)
        todo, skipped = plan(entries, DatasetStore(args.out), args.force, args.mirror)
        for entry in todo:
            print(f"extract  {entry.model_id}  ({entry.arch or 'state-dict order'}; {len(entry.sources)} source(s))")
        for entry in skipped:
            print(f"skip     {entry.model_id}  (complete)")
        print(f"{len(todo)} to extract, {len(skipped)} complete")
        return 0
    if args.extractors is not None and args.extractors < 1:
        raise ConfigError("--extractors must be at least 1")
    probe = probe_config_of(args)
    if probe is not None:
        check_probe_data(probe)
    options = {k: v for k, v in {
        "address": args.address, "extractors": args.extractors, "max_downloads": args.max_downloads,
        "mirror": args.mirror, "cache_dir": args.cache_dir, "cache_max_gb": args.cache_max_gb,
        "keep_checkpoints": args.keep_checkpoints, "retries": args.retries, "timeout_s": args.timeout,
        "max_checkpoint_gb": args.max_checkpoint_gb, "min_download_rate_kbs": args.min_download_rate,
        "rate_window_s": args.rate_window, "download_deadline_s": args.download_deadline,
        "drive_downloads": args.drive_downloads,
        "stall_timeout_s": args.stall_timeout, "extract_timeout_s": args.extract_timeout,
        "trust_zoo_code": args.trust_zoo_code, "probe": probe}.items() if v is not None}
    summary = build_zoo(args.zoo, args.out, backend=args.backend, device=args.device, force=args.force,
                        progress=not args.no_progress, model_info=args.model_info, datasets=args.datasets,
                        threat_models=args.threat_models, models=models, limit=args.limit,
                        command=" ".join(["filterlens", *args.argv]), **options)
    print(summary.text())
    return summary.exit_code(args.allow_failures)


def _drop_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return out
