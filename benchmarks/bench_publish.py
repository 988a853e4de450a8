"""Publishing cost: staging, first upload, no-op republish and an incremental republish, against the fake Hub.

    .venv/bin/python benchmarks/bench_publish.py [--models 12] [--width 256]

Builds a dataset from generated VGG-like checkpoints (four 3x3 convs, ~100k filters,
~4 MB of Parquet per model at width 256), then measures on this machine:
staging (hard links + sha256), the first publish to the fake Hub on 127.0.0.1
(huggingface_hub's LFS path, Xet off: measures the client and the planning, not a
network), a republish of the unchanged dataset (must send nothing), and a republish
after one model was added (must send only that model's three files, the manifest
and card). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from fakehub import FakeHub  # noqa: E402
from torch import nn  # noqa: E402

from pipeline.dataset.store import DatasetStore  # noqa: E402
from pipeline.extract.extractor import extract_model
from pipeline.publish import sync as publishing  # noqa: E402
from pipeline.publish.stage import stage  # noqa: E402
from pipeline.zoo.spec import ModelRequest  # noqa: E402


def add_model(root: Path, work: Path, index: int, width: int) -> None:
    torch.manual_seed(index)
    widths = [3, width // 4, width // 2, width, width]
    net = nn.Sequential(*(nn.Conv2d(a, b, 3) for a, b in zip(widths, widths[1:], strict=False)))
    checkpoint = work / f"m{index}.pt"
    torch.save(net.state_dict(), checkpoint)
    request = ModelRequest(model_id=f"bench/cifar10/m{index:03d}", checkpoints=[str(checkpoint)], dataset="cifar10",
                           threat_model="Linf" if index % 2 else "none", robust=bool(index % 2),
                           source_uri=f"https://models.example.org/m{index}.pt")
    extract_model(request, DatasetStore(str(root)), device="cpu", progress=False)


def timed(function, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = False
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp, FakeHub() as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        root, work = Path(tmp) / "dataset", Path(tmp) / "work"
        work.mkdir()
        for index in range(args.models):
            add_model(root, work, index, args.width)
        DatasetStore(str(root)).update_manifest({"command": "bench"})

        tree, stage_s = timed(stage, str(root), Path(tmp) / "staged", "lab/bench-filters")
        first, first_s = timed(publishing.publish, str(root), "lab/bench-filters", token="hf_writer", progress=False)
        noop, noop_s = timed(publishing.publish, str(root), "lab/bench-filters", token="hf_writer", progress=False)
        add_model(root, work, args.models, args.width)
        DatasetStore(str(root)).update_manifest({"command": "bench"})
        uploads_before = len(hub.lfs_uploads)
        incremental, incremental_s = timed(publishing.publish, str(root), "lab/bench-filters", token="hf_writer",
                                           progress=False)
        mb = tree.bytes / 1e6
        print(json.dumps({
            "models": args.models, "files": len(tree.files), "filters": tree.rows["filters"], "megabytes": round(mb, 1),
            "stage_s": round(stage_s, 2), "stage_mb_per_s": round(mb / stage_s, 1),
            "first_publish_s": round(first_s, 2), "first_publish_mb_per_s": round(mb / first_s, 1),
            "first_publish_commits": len(first.commits),
            "noop_republish_s": round(noop_s, 2), "noop_commits": len(noop.commits),
            "incremental_s": round(incremental_s, 2), "incremental_files_sent": len(incremental.uploaded),
            "incremental_lfs_objects": len(hub.lfs_uploads) - uploads_before,
            "incremental_commits": len(incremental.commits),
        }, indent=2))


if __name__ == "__main__":
    main()
