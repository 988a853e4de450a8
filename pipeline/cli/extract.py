"""``filterlens extract``: one checkpoint (or one ensemble's files) into the dataset."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.zoo.spec import (
    ADVERSARIAL_THREAT_MODELS,
    THREAT_MODELS,
    ModelRequest,
    parse_input_shape,
)

log = logging.getLogger(__name__)

HELP = """\
Extract every 3x3 convolution filter and per-layer metric of one model into the
dataset at --out (created if needed). Several CHECKPOINT files form one ensemble.

Without --arch the conv layers are ordered as they appear in the state dict
(depth_source = state_dict); with --arch the weights are bound to the
architecture and ordered by a forward pass, and only convs that run are kept.
Re-running skips a model already extracted from the same bytes (sha256);
--force re-extracts. Nothing of a failed model is written except its row in
failures/.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("extract", help="extract one checkpoint into the dataset", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="+", help=".pt/.pth/.ckpt/.bin, .safetensors or .onnx file(s)")
    p.add_argument("--out", required=True, help="dataset root: a directory or URI (s3://bucket/path, ...)")
    p.add_argument("--arch", help="robustbench:<dataset>:<threat_model>:<name>, timm:<name>, torchvision:<name> "
                                  "or <module>:<factory>")
    p.add_argument("--model-id", help="stable key of the model (default: the checkpoint's file name)")
    p.add_argument("--dataset", default=None, help="training dataset, e.g. cifar10 (default: from --arch, else unknown)")
    p.add_argument("--threat-model", choices=THREAT_MODELS, default=None,
                   help="Linf, L2, corruptions or none (default: none with --normal, else from --arch, else none)")
    robust = p.add_mutually_exclusive_group()
    robust.add_argument("--robust", dest="robust", action="store_true", default=None,
                        help="mark as adversarially trained (default when the threat model is Linf or L2)")
    robust.add_argument("--normal", dest="robust", action="store_false",
                        help="mark as not adversarially trained (normally trained, or corruption-robust)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--input-shape", help="CxHxW of the dummy input for the forward pass (default from the dataset)")
    p.add_argument("--architecture", help="human-readable architecture name to record (e.g. WideResNet-28-10; "
                                          "default for robustbench:... from the leaderboard metadata)")
    p.add_argument("--clean-acc", type=float, help="clean accuracy in percent, to record")
    p.add_argument("--robust-acc", type=float, help="robust accuracy in percent, to record")
    p.add_argument("--eps", type=float, help="threat-model epsilon, to record")
    p.add_argument("--paper", help="paper title or link, to record")
    p.add_argument("--force", action="store_true", help="re-extract even if complete with the same checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def leaderboard_fields(arch: str | None) -> dict:
    """What the RobustBench leaderboard says of a ``robustbench:<dataset>:<threat_model>:<name>`` spec ({} else)."""
    from pipeline.zoo.leaderboard import entry_spec, leaderboard_info, robustbench_key

    key = robustbench_key(arch)
    if key is None:
        return {}
    meta = leaderboard_info().get(key)
    if meta is None:
        log.warning("%s: no leaderboard metadata (architecture and accuracies unknown): pass --architecture, or "
                    "run `filterlens zoo refresh` when online", arch)
    return entry_spec(*key, meta or {})


def request_from_args(args: argparse.Namespace) -> ModelRequest:
    """The request; a robustbench spec fills in what the user did not give from the leaderboard metadata.

    Its architecture name always; its accuracies, eps, extra data, paper and venue only while
    the model is recorded as that entry (same threat model and robust flag). ``robust`` means
    adversarially trained: it defaults to a Linf or L2 threat model and is refused for others.
    """
    known = leaderboard_fields(args.arch)
    threat_model = args.threat_model or ("none" if args.robust is False else known.get("threat_model")) or "none"
    robust = args.robust if args.robust is not None else threat_model in ADVERSARIAL_THREAT_MODELS
    if robust and threat_model not in ADVERSARIAL_THREAT_MODELS:
        raise ConfigError(f"--robust means adversarially trained: it needs --threat-model Linf or L2, not "
                          f"{threat_model} (a corruption-robust model keeps --threat-model corruptions and "
                          "robust = false; `filterlens stats --include-corruptions` pools it)")
    same_entry = bool(known) and (known["threat_model"], known["robust"]) == (threat_model, robust)
    given = {"architecture": args.architecture, "clean_acc": args.clean_acc, "robust_acc": args.robust_acc,
             "eps": args.eps, "paper": args.paper, "extra_data": None, "venue": None}
    fill = [k for k, v in given.items() if v is None and (same_entry or k == "architecture")]
    recorded = {**given, **{k: known.get(k) for k in fill}}
    filled = sorted(k for k in fill if recorded[k] is not None)
    model_id = args.model_id or Path(args.checkpoint[0]).stem
    return ModelRequest(
        model_id=model_id, checkpoints=args.checkpoint, arch=args.arch,
        dataset=args.dataset or known.get("dataset") or "unknown", threat_model=threat_model, robust=robust,
        input_shape=parse_input_shape(args.input_shape), **recorded,
        metadata={"leaderboard": "robustbench/" + "/".join(args.arch.split(":")[1:]), "from_leaderboard": filled}
        if filled else {},
    )


def check_input_shape(request: ModelRequest) -> None:
    """A usage error (exit 2, nothing written) when the forward pass cannot know the dummy input's size.

    timm models carry their input size and ``module:factory`` models may (only building them tells);
    torchvision models never do, so they need a known --dataset or --input-shape.
    """
    from pipeline.checkpoints.arch_spec import parse_arch_spec
    from pipeline.checkpoints.architectures import DATASET_INPUT_SHAPES

    if not request.arch or request.input_shape or all(p.lower().endswith(".onnx") for p in request.checkpoints):
        return
    spec = parse_arch_spec(request.arch)
    if spec.kind == "torchvision" and request.dataset.lower() not in DATASET_INPUT_SHAPES:
        raise ConfigError(f"--arch {request.arch}: cannot tell the input size of the forward pass for dataset "
                          f"{request.dataset!r}; pass --dataset ({', '.join(sorted(DATASET_INPUT_SHAPES))}) "
                          "or --input-shape CxHxW (e.g. 3x224x224)")


def run(args: argparse.Namespace) -> int:
    from pipeline.digest import sha256_of_files_soon

    request = request_from_args(args)
    check_input_shape(request)
    digest = sha256_of_files_soon(request.checkpoints)  # hashes while torch is imported below

    from pipeline.dataset.layout import utcnow
    from pipeline.dataset.store import DatasetStore
    from pipeline.extract.extractor import run_one

    store = DatasetStore(args.out)
    known = digest() if digest is not None else None
    if known is not None:
        request = dataclasses.replace(request, digest=known)
    result = run_one(request, store, device=args.device, force=args.force)
    if not result.skipped or result.updated:
        store.update_manifest({"command": "extract", "model_id": result.model_id,
                               "seconds": round(result.seconds, 3), "finished_at": utcnow().isoformat(),
                               **({"updated": result.updated} if result.updated else {})})
    if args.json:
        json.dump(result.__dict__, sys.stdout)
        print()
    elif result.skipped and result.updated:
        print(f"{result.model_id}: already in {args.out} (same checkpoint sha256); updated {', '.join(result.updated)}")
    elif result.skipped:
        print(f"{result.model_id}: already in {args.out} (same checkpoint sha256); use --force to redo")
    else:
        print(f"{result.model_id}: {result.n_conv_layers} conv layers, {result.n_filters} 3x3 filters "
              f"-> {args.out} ({result.seconds:.1f}s on {result.device})")
    return 0
