"""``filterlens extract``: one checkpoint (or one ensemble's files) into the dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.zoo.spec import THREAT_MODELS, ModelRequest, parse_input_shape

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
                   help="Linf, L2, corruptions or none (default: from --arch, else none)")
    robust = p.add_mutually_exclusive_group()
    robust.add_argument("--robust", dest="robust", action="store_true", default=None,
                        help="mark as robust (default when the threat model is not none)")
    robust.add_argument("--normal", dest="robust", action="store_false", help="mark as normally trained")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--input-shape", help="CxHxW of the dummy input for the forward pass (default from the dataset)")
    p.add_argument("--architecture", help="human-readable architecture name to record (e.g. WideResNet-28-10)")
    p.add_argument("--clean-acc", type=float, help="clean accuracy in percent, to record")
    p.add_argument("--robust-acc", type=float, help="robust accuracy in percent, to record")
    p.add_argument("--eps", type=float, help="threat-model epsilon, to record")
    p.add_argument("--paper", help="paper title or link, to record")
    p.add_argument("--force", action="store_true", help="re-extract even if complete with the same checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def request_from_args(args: argparse.Namespace) -> ModelRequest:
    dataset, threat_model = args.dataset, args.threat_model
    if args.arch and args.arch.startswith("robustbench:"):
        parts = args.arch.split(":")
        if len(parts) == 4:
            dataset = dataset or parts[1]
            threat_model = threat_model or parts[2]
    threat_model = threat_model or "none"
    robust = args.robust if args.robust is not None else threat_model != "none"
    if robust and threat_model == "none":
        raise ConfigError("--robust needs --threat-model Linf, L2 or corruptions")
    model_id = args.model_id or Path(args.checkpoint[0]).stem
    return ModelRequest(
        model_id=model_id, checkpoints=args.checkpoint, arch=args.arch, dataset=dataset or "unknown",
        threat_model=threat_model, robust=robust, input_shape=parse_input_shape(args.input_shape),
        architecture=args.architecture, clean_acc=args.clean_acc, robust_acc=args.robust_acc, eps=args.eps,
        paper=args.paper,
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.dataset.layout import utcnow
    from pipeline.dataset.store import DatasetStore
    from pipeline.extract.extractor import run_one

    request = request_from_args(args)
    store = DatasetStore(args.out)
    result = run_one(request, store, device=args.device, force=args.force)
    if not result.skipped:
        store.update_manifest({"command": "extract", "model_id": result.model_id,
                               "seconds": round(result.seconds, 3), "finished_at": utcnow().isoformat()})
    if args.json:
        json.dump(result.__dict__, sys.stdout)
        print()
    elif result.skipped:
        print(f"{result.model_id}: already in {args.out} (same checkpoint sha256); use --force to redo")
    else:
        print(f"{result.model_id}: {result.n_conv_layers} conv layers, {result.n_filters} 3x3 filters "
              f"-> {args.out} ({result.seconds:.1f}s on {result.device})")
    return 0
