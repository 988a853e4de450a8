"""A writer or reader process for the concurrency stress test (tests/test_concurrency.py); not a test itself.

    python stress_worker.py write ROOT LOG CHECKPOINT SEED MODELS...   re-extract MODELS (--force) in a loop
    python stress_worker.py build ROOT LOG CHECKPOINT SEED MODELS...   rebuild a zoo of MODELS (build --force) in a loop
    python stress_worker.py read ROOT LOG SEED                          open, hold, check a snapshot in a loop

Both run until killed. A writer appends one line to LOG after each finished step
(``model <id>`` after a commit, ``record <n>`` after a build record); a reader appends
``ok <models>`` per consistent snapshot and ``FAIL <reason>`` when a check fails, and
exits 1 on a failure.
"""

from __future__ import annotations

import random
import sys
import time

from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore


def log_line(path: str, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text + "\n")
        fh.flush()


def write(root: str, log: str, checkpoint: str, seed: int, models: list[str]) -> None:
    from pipeline.extract.extractor import extract_model
    from pipeline.zoo.spec import ModelRequest

    rng = random.Random(seed)
    store = DatasetStore(root)
    for step in range(10**6):
        model_id = rng.choice(models)
        request = ModelRequest(model_id, checkpoints=[checkpoint], arch="zoo_fixtures:tiny_net", dataset="cifar10",
                               threat_model="Linf" if model_id.endswith(("1", "3")) else "none")
        extract_model(request, store, device="cpu", force=True, progress=False)
        log_line(log, f"model {model_id}")
        if step % 3 == 0:
            store.update_manifest({"command": "stress", "writer": seed, "step": step})
            log_line(log, f"record {seed}-{step}")


CHECK = """
SELECT (SELECT coalesce(sum(n_filters), 0) FROM models) AS promised,
       (SELECT count(*) FROM filters) AS filters,
       (SELECT count(*) FROM models) AS models,
       (SELECT count(DISTINCT model_id) FROM models) AS distinct_models,
       (SELECT count(*) FROM models m WHERE NOT EXISTS (SELECT 1 FROM layers l WHERE l.model_id = m.model_id))
           AS models_without_layers
"""


def read(root: str, log: str, seed: int) -> int:
    rng = random.Random(seed)
    while not DatasetStore(root).stored_models():  # start once a first model is committed
        time.sleep(0.2)
    while True:
        try:
            with open_dataset(root) as ds:
                time.sleep(rng.uniform(0, 0.5))  # hold the snapshot while writers commit and replace
                (row,) = ds.fetch_arrow(CHECK).to_pylist()
                time.sleep(rng.uniform(0, 0.3))
                (again,) = ds.fetch_arrow(CHECK).to_pylist()
        except Exception as exc:  # noqa: BLE001 - any failure of a reader is what the test looks for
            log_line(log, f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return 1
        problems = [name for name, bad in (
            ("filters != sum(n_filters)", row["filters"] != row["promised"]),
            ("a model twice", row["models"] != row["distinct_models"]),
            ("a model without layers", row["models_without_layers"] != 0),
            ("the snapshot changed while held", again != row)) if bad]
        if problems:
            log_line(log, f"FAIL {', '.join(problems)}: {row} then {again}")
            return 1
        log_line(log, f"ok {row['models']}")


def build(root: str, log: str, checkpoint: str, seed: int, models: list[str]) -> None:
    """``filterlens build --force`` (local backend) of a zoo holding a shuffled half of MODELS, in a loop."""
    import os

    import yaml

    from pipeline.build.zoo_build import build_zoo

    rng = random.Random(seed)
    zoo = f"{log}.zoo.yaml"
    while True:
        chosen = rng.sample(models, max(1, len(models) // 2))
        entries = [{"id": m, "source": checkpoint, "arch": "zoo_fixtures:tiny_net", "dataset": "cifar10",
                    "threat_model": "Linf" if m.endswith(("1", "3")) else "none"} for m in chosen]
        with open(zoo + ".tmp", "w") as fh:
            yaml.safe_dump({"models": entries}, fh)
        os.replace(zoo + ".tmp", zoo)
        summary = build_zoo(zoo, root, backend="local", force=True, progress=False, keep_checkpoints=True,
                            cache_dir=f"{log}.cache", command="stress build")
        for model_id in chosen[:summary.done]:
            log_line(log, f"model {model_id}")


def main(argv: list[str]) -> int:
    kind, root, log = argv[:3]
    if kind in ("write", "build"):
        (write if kind == "write" else build)(root, log, argv[3], int(argv[4]), argv[5:])
        return 0
    return read(root, log, int(argv[3]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
