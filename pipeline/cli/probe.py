"""``filterlens probe``: the first-stage probe (the paper's second finding) for models already extracted."""

from __future__ import annotations

import argparse

from pipeline.cli.probe_options import add_probe_options, check_probe_data, probe_config_of

HELP = """\
Probe how much of an input perturbation survives the first convolution stage of
every model of a zoo that is already extracted into --out (with an architecture:
the model must run). Per model x perturbation (pgd: PGD against the model; random:
random signs; transfer: one fixed PGD set from a reference model, the same inputs
for every model) x stage (conv, conv_relu), the rows go to the probes table,
committed per model; a rerun with the same settings skips probed models, other
settings replace that model's probe rows only. Probe data is never downloaded.

examples:
  filterlens probe zoo.yaml --out dataset/ --probe-data cifar10:~/data/cifar10 --probe-images 512
  filterlens probe zoo.yaml --out dataset/ --probe random,transfer --probe-data synthetic
  filterlens build zoo.yaml --out dataset/ --probe --probe-data cifar10:~/data   # extract and probe

exit codes: 0 all probed or up to date, 3 some probe failed, 2 bad usage (e.g. missing probe data), 4 dataset
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.cli.build import add_zoo_filters

    p = subparsers.add_parser("probe", help="probe the first conv stage of extracted models (the paper's "
                                            "second finding)", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("zoo", help="zoo YAML file, or 'robustbench' (where the checkpoints come from)")
    p.add_argument("--out", required=True, help="the dataset the models were extracted into")
    add_zoo_filters(p)
    add_probe_options(p, flag=False)
    p.add_argument("--backend", choices=("ray", "local"), default="local",
                   help="local (in-process; default) or ray (the build's actors)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--mirror", help="URL prefix or directory that replaces every remote source")
    p.add_argument("--cache-dir", help="where downloaded checkpoints go")
    p.add_argument("--trust-zoo-code", action="store_true", help="run module:factory architectures of the zoo")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when some probes failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.build.plan import load_entries
    from pipeline.build.zoo_build import build_zoo
    from pipeline.dataset.store import DatasetStore
    from pipeline.errors import ProbeUnavailableError

    config = probe_config_of(args)
    check_probe_data(config)
    store = DatasetStore(args.out)
    store.require()
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    entries = load_entries(args.zoo, args.model_info, args.datasets, args.threat_models, models, args.limit)
    complete = store.complete_models()
    extracted = [e for e in entries if e.model_id in complete]
    for entry in entries:
        if entry.model_id not in complete:
            print(f"not extracted  {entry.model_id}  (run filterlens build first)")
    failed = 0
    for entry in [e for e in extracted if not e.arch]:
        failed += 1
        store.record_failure(entry.model_id, entry.dataset, " ".join(entry.sources), ProbeUnavailableError(
            f"{entry.model_id}: only models with an architecture (the zoo's arch) can be probed"))
        print(f"FAILED {entry.model_id}: [probe] ProbeUnavailableError: no architecture in the zoo entry")
    runnable = [e for e in extracted if e.arch]
    options = {k: v for k, v in {"mirror": args.mirror, "cache_dir": args.cache_dir,
                                 "trust_zoo_code": args.trust_zoo_code}.items() if v is not None}
    summary = build_zoo(runnable, args.out, backend=args.backend, device=args.device, force=False,
                        progress=not args.no_progress, command=" ".join(["filterlens", *args.argv]),
                        probe=config, **options) if runnable else None
    if summary is not None:
        print(summary.text())
    failed += summary.probe_failed + summary.failed if summary is not None else 0
    return 3 if failed and not args.allow_failures else 0
