"""Benchmark: the first-stage probe's cost per model (images per second), CPU or GPU.

Two models with random weights: the demo's SmallResNet (32x32) and a WRN-28-10-size
network (RobustBench's WideResNet-28-10, the zoo's most common CIFAR architecture),
each probed with all three perturbations (PGD-10 against the model, random signs, a
transfer set) on synthetic 32x32 images. Also the whole-process cost the user feels:
``filterlens build`` of a small local zoo with and without ``--probe``, side by side,
as a ratio per pair of runs.

    python benchmarks/bench_probe.py [--device cpu|cuda] [--images-small 256] [--images-wrn 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def in_process(device: str, images_small: int, images_wrn: int) -> list[dict]:
    import torch

    from pipeline.probe.config import ProbeConfig
    from pipeline.probe.run_one import probe_model
    from pipeline.train.data import synthetic_split
    from pipeline.train.demo_models import SmallResNet

    def wrn() -> torch.nn.Module:
        from pipeline.checkpoints.robustbench import import_robustbench

        import_robustbench()  # aliases autoattack before robustbench imports
        from robustbench.model_zoo.architectures.wide_resnet import WideResNet

        return WideResNet(depth=28, widen_factor=10)

    results = []
    target = torch.device(device)
    for name, build, n in (("SmallResNet (demo)", SmallResNet, images_small), ("WRN-28-10", wrn, images_wrn)):
        torch.manual_seed(0)
        model = build().to(target).eval()
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        images = synthetic_split("test", n, seed=0, size=32)
        transfer = torch.zeros_like(images.images).uniform_(-8 / 255, 8 / 255)
        config = ProbeConfig(n_images=n, batch_size=min(n, 128))
        probe_model(model, first, "first", synthetic_split("test", 2, seed=1, size=32),
                    ProbeConfig(n_images=2, kinds=("random",)), target, "warm-up", "synthetic")
        started = time.perf_counter()
        probe_model(model, first, "first", images, config, target, name, "synthetic", transfer, "ref")
        if target.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        results.append({"model": name, "device": device, "images": n, "seconds": round(seconds, 3),
                        "images_per_s": round(n / seconds, 2),
                        "n_params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)})
    return results


def whole_process(repeat: int, device: str) -> dict:
    """``filterlens build`` of a 3-model local zoo, without and with --probe (fresh dataset each run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import yaml
    from zoo_fixtures import tiny_bytes

    work = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    models = []
    for i in range(3):
        (work / f"m{i}.pt").write_bytes(tiny_bytes(i))
        models.append({"id": f"b/m{i}", "source": str(work / f"m{i}.pt"), "arch": "zoo_fixtures:tiny_net",
                       "dataset": "cifar10"})
    (work / "zoo.yaml").write_text(yaml.safe_dump({"models": models}))
    env = {**os.environ, "FILTERLENS_TRUSTED_MODULES": "zoo_fixtures",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "tests"),
                                          os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "pipeline", "-q", "build", str(work / "zoo.yaml"), "--backend", "local",
            "--device", device, "--no-progress"]
    times: dict[str, list[float]] = {"build": [], "build --probe": []}
    for run in range(repeat):
        for label, extra in (("build", []), ("build --probe", ["--probe", "--probe-images", "512"])):
            out = work / f"ds-{label.replace(' ', '')}-{run}"
            started = time.perf_counter()
            subprocess.run([*base, "--out", str(out), *extra], env=env, check=True, stdout=subprocess.DEVNULL)
            times[label].append(time.perf_counter() - started)
    ratios = [p / b for p, b in zip(times["build --probe"], times["build"], strict=True)]
    return {"runs": repeat, "median_s": {k: round(statistics.median(v), 2) for k, v in times.items()},
            "ratio_median": round(statistics.median(ratios), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images-small", type=int, default=256)
    parser.add_argument("--images-wrn", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    report = {"in_process": in_process(args.device, args.images_small, args.images_wrn),
              "whole_process": whole_process(args.repeat, args.device)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
