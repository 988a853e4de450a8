"""``filterlens demo``: train a small zoo offline, build its filter dataset, run the statistics, check the paper.

What it is, plainly: a handful of small CNNs (three architectures, each trained
normally and with PGD-Linf adversarial training) on a procedurally generated
32x32 image dataset, trained on this machine in a few minutes. It exercises the
whole pipeline exactly as a real zoo would (zoo YAML -> ``build_zoo`` -> dataset
-> ``filterlens stats``) without any download. It is not a reproduction of the
paper's numbers: the models are tiny and briefly trained, so the paper's
directions may or may not show up, and the demo reports what it measures.

Layout of ``--out`` (default ``filterlens-demo/``)::

    zoo/zoo.yaml, zoo/checkpoints/*.pt    the trained models (reused when unchanged)
    dataset/                               the filter dataset (models/ layers/ filters/)
    report/                                the statistics report (report.md, report.html)
    directions.csv                         robust-vs-normal comparison of the three metrics
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.errors import BuildFailedError, ConfigError
from pipeline.train.config import DEMO_ARCHS, TrainConfig, demo_arch_spec

if TYPE_CHECKING:
    from pipeline.dataset.query import FilterDataset
    from pipeline.train.train_zoo import ZooSummary

log = logging.getLogger(__name__)

ZOO_NAME = "filterlens-demo"

ABOUT = (
    "filterlens demo: {n} small CNNs ({archs}; each trained normally and with PGD-Linf adversarial "
    "training, eps={eps:.4f}, {seeds} seed(s)) on a procedurally generated 32x32 image dataset "
    "(10 classes of gratings, shapes and textures), trained on this machine. Tiny models, synthetic data, "
    "a few epochs: this exercises the whole pipeline offline; it does not reproduce the paper's numbers."
)

PAPER_DIRECTIONS = {
    # metric: (expected sign of robust - normal, words)
    "sparsity": (-1, "robust models have fewer sparse filters"),
    "variance_entropy": (+1, "robust models have more diverse filters (higher variance entropy)"),
    "orthogonality": (+1, "robust models have more orthogonal filters"),
}


@dataclass
class DemoConfig:
    """Size of the demo zoo and its training recipe (defaults: a few minutes on a 2-core laptop)."""

    out: str = "filterlens-demo"
    archs: Sequence[str] = DEMO_ARCHS
    seeds: Sequence[int] = (0, 1)
    epochs: int = 4
    n_train: int = 2000
    n_test: int = 1000
    eps: float = 8 / 255
    attack_steps: int = 2
    eval_steps: int = 10
    n_eval_robust: int = 300
    backend: str = "ray"
    device: str = "auto"
    force: bool = False
    progress: bool = True
    stats: bool = True
    probe_images: int = 256
    """Synthetic probe images per model for the first-stage probe (0: no probe)."""

    def plan(self) -> list[TrainConfig]:
        """Every (architecture, normal/adversarial, seed) model of the demo zoo."""
        if not self.archs or not self.seeds:
            raise ConfigError("the demo needs at least one architecture and one seed")
        base = TrainConfig(arch=demo_arch_spec(self.archs[0]), dataset="synthetic", epochs=self.epochs,
                           n_train=self.n_train, n_test=self.n_test, eps=self.eps, attack_steps=self.attack_steps,
                           step_size=2.5 * self.eps / self.attack_steps, eval_steps=self.eval_steps,
                           n_eval_robust=self.n_eval_robust, device=self.device, id_prefix=ZOO_NAME)
        from pipeline.train.config import zoo_plan

        return zoo_plan([demo_arch_spec(a) for a in self.archs], list(self.seeds), base)

    @property
    def zoo_path(self) -> str:
        return os.path.join(self.out, "zoo", "zoo.yaml")

    @property
    def dataset_path(self) -> str:
        return os.path.join(self.out, "dataset")

    @property
    def report_path(self) -> str:
        return os.path.join(self.out, "report")


@dataclass
class Direction:
    """Robust-vs-normal comparison of one metric over the robust/normal pairs (``demo_pairs``: same architecture
    and seed, the rule ``filterlens stats`` pairs by)."""

    metric: str
    scope: str
    robust_mean: float | None
    normal_mean: float | None
    pairs: int
    pairs_agreeing: int
    expected: str
    verdict: str


@dataclass
class DemoResult:
    """Paths, timings and findings of one demo run."""

    zoo: ZooSummary
    build_text: str
    directions: list[Direction]
    report: str | None
    seconds: dict[str, float] = field(default_factory=dict)
    stats_text: str = ""


# --- the paper's directions, measured ------------------------------------------------------

_MODEL_METRICS_SQL = """
SELECT m.model_id,
       SUM(l.n_sparse)::DOUBLE / SUM(l.n_filters)                                     AS sparsity,
       SUM(l.variance_entropy * l.n_nonsparse) / NULLIF(SUM(l.n_nonsparse), 0)         AS variance_entropy,
       SUM(l.orthogonality * l.out_channels) / SUM(l.out_channels)                     AS orthogonality
FROM models m JOIN layers l USING (model_id)
WHERE l.kernel_h = 3 AND l.kernel_w = 3 AND l.n_nonfinite = 0 AND {where}
GROUP BY ALL
"""

SCOPES = {
    "all 3x3 layers": "TRUE",
    "first conv layer": "l.conv_index = 0",
    "deepest 3x3 layer": "l.conv_index = (SELECT MAX(x.conv_index) FROM layers x "
                         "WHERE x.model_id = l.model_id AND x.kernel_h = 3 AND x.kernel_w = 3)",
}
"""The layer selections the paper singles out: the model as a whole, the first layer, the deepest layers."""


def demo_pairs(data: FilterDataset, model_prefix: str | None = None) -> list[tuple[str, str]]:
    """(robust, normal) model ids by the one pairing rule of ``filterlens stats`` (``pipeline.stats.pairing.
    auto_pairs``: same architecture and dataset, and the same seed): one pair per architecture and seed."""
    from pipeline.stats.pairing import auto_pairs

    where = "TRUE" if not model_prefix else "starts_with(model_id, $prefix)"
    models = data.con.execute(f"SELECT model_id, model, dataset, robust, architecture, metadata_json FROM models "
                              f"WHERE {where} ORDER BY model_id", {"prefix": model_prefix} if model_prefix else None
                              ).df()
    pairs, _ = auto_pairs(models)
    return list(zip(pairs.robust_model_id, pairs.normal_model_id, strict=True))


def paper_directions(dataset: str, model_prefix: str | None = None) -> list[Direction]:
    """Compare robust with normal models (paired as ``filterlens stats`` pairs them) on the paper's metrics.

    Per model, over the selected 3x3 layers: sparsity = sum of sparse / sum of
    filters, variance entropy weighted by non-sparse filters, orthogonality
    weighted by output channels (docs/design.md, "Analyses"). A direction
    "shows up" when the mean paired difference has the paper's sign and most
    pairs agree; nothing is adjusted to make it so.
    """
    from pipeline.dataset.query import open_dataset

    prefix_filter = "TRUE" if not model_prefix else "starts_with(m.model_id, $prefix)"
    directions = []
    with open_dataset(dataset) as data:
        pairs = demo_pairs(data, model_prefix)
        for scope, where in SCOPES.items():
            query = _MODEL_METRICS_SQL.format(where=f"{where} AND {prefix_filter}")
            cursor = data.con.execute(query, {"prefix": model_prefix} if model_prefix else None)
            columns = [c[0] for c in cursor.description]
            rows = {values[0]: dict(zip(columns, values, strict=True)) for values in cursor.fetchall()}
            scoped = [(rows[r], rows[n]) for r, n in pairs if r in rows and n in rows]
            for metric, (sign, words) in PAPER_DIRECTIONS.items():
                both = [(r[metric], n[metric]) for r, n in scoped if r[metric] is not None and n[metric] is not None]
                diffs = [r - n for r, n in both]
                r_vals = list({r["model_id"]: r[metric] for r, _ in scoped if r[metric] is not None}.values())
                n_vals = list({n["model_id"]: n[metric] for _, n in scoped if n[metric] is not None}.values())
                directions.append(Direction(
                    metric=metric, scope=scope,
                    robust_mean=sum(r_vals) / len(r_vals) if r_vals else None,
                    normal_mean=sum(n_vals) / len(n_vals) if n_vals else None,
                    pairs=len(diffs), pairs_agreeing=sum(1 for d in diffs if d * sign > 0), expected=words,
                    verdict=_verdict(diffs, sign)))
        directions += probe_directions(data, pairs, model_prefix)
    return directions


PROBE_DIRECTION = (-1, "lower (less of the perturbation passed on)")
"""The paper's second finding: robust models' first conv + ReLU passes on less of a perturbation."""

_PROBE_SQL = """
SELECT model_id, gain_mean FROM probes
WHERE stage = 'conv_relu' AND perturbation = $kind AND {where}
"""


def probe_directions(data: FilterDataset, pairs: Sequence[tuple[str, str]], model_prefix: str | None) -> list[Direction]:
    """The second finding over the demo's pairs: gain of the first conv + ReLU per perturbation (none if unprobed)."""
    where = "TRUE" if not model_prefix else "starts_with(model_id, $prefix)"
    sign, words = PROBE_DIRECTION
    directions = []
    for kind in ("transfer", "pgd", "random"):
        params = {"kind": kind, **({"prefix": model_prefix} if model_prefix else {})}
        gains = dict(data.con.execute(_PROBE_SQL.format(where=where), params).fetchall())
        if not gains:
            continue
        both = [(gains[r], gains[n]) for r, n in pairs if gains.get(r) is not None and gains.get(n) is not None]
        diffs = [r - n for r, n in both]
        robust = list({r: gains[r] for r, _ in pairs if gains.get(r) is not None}.values())
        normal = list({n: gains[n] for _, n in pairs if gains.get(n) is not None}.values())
        directions.append(Direction(
            metric=f"gain ({kind})", scope="first conv + ReLU",
            robust_mean=sum(robust) / len(robust) if robust else None,
            normal_mean=sum(normal) / len(normal) if normal else None,
            pairs=len(diffs), pairs_agreeing=sum(1 for d in diffs if d * sign > 0), expected=words,
            verdict=_verdict(diffs, sign)))
    return directions


def _verdict(diffs: Sequence[float], sign: int) -> str:
    if not diffs:
        return "no pairs"
    if all(d == 0 for d in diffs):
        return "no difference"
    mean = sum(diffs) / len(diffs)
    agreeing = sum(1 for d in diffs if d * sign > 0)
    if mean * sign > 0 and agreeing * 2 > len(diffs):
        return "shows up"
    if mean * sign < 0 and agreeing * 2 < len(diffs):
        return "opposite"
    return "mixed"


def directions_text(directions: Sequence[Direction]) -> str:
    """A fixed-width table of the directions for the terminal."""
    lines = [f"{'scope':<18} {'metric':<17} {'robust':>8} {'normal':>8}  {'pairs agreeing':>14}  verdict"]
    for d in directions:
        r = f"{d.robust_mean:.4f}" if d.robust_mean is not None else "-"
        n = f"{d.normal_mean:.4f}" if d.normal_mean is not None else "-"
        lines.append(f"{d.scope:<18} {d.metric:<17} {r:>8} {n:>8}  {f'{d.pairs_agreeing}/{d.pairs}':>14}  {d.verdict}")
    return "\n".join(lines)


def write_directions_csv(directions: Sequence[Direction], path: str) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in dataclasses.fields(Direction)])
        writer.writeheader()
        for d in directions:
            writer.writerow(dataclasses.asdict(d))


# --- the demo ------------------------------------------------------------------------------

def prune_dataset(dataset: str, keep_ids: set[str], prefix: str) -> list[str]:
    """Delete models under ``prefix`` that are no longer in the demo zoo (e.g. after --seeds shrank)."""
    from pipeline.dataset.store import DatasetStore

    store = DatasetStore(dataset)
    if not store.exists():
        return []
    stale = [m for m in store.stored_models() if m.startswith(prefix + "/") and m not in keep_ids]
    for model_id in stale:
        store.delete_model(model_id)
    return stale


def stats_available() -> bool:
    """Whether ``filterlens stats`` is installed in this version."""
    return importlib.util.find_spec("pipeline.stats.run") is not None


def run_demo(config: DemoConfig) -> DemoResult:
    """Train (or reuse) the demo zoo, build its dataset through ``build_zoo``, measure directions, run stats."""
    from pipeline.build.zoo_build import (
        build_zoo,  # imported here: the build pulls in Ray and the fetchers
    )

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    plan = config.plan()
    from pipeline.train.train_zoo import train_zoo

    zoo = train_zoo(plan, config.zoo_path, name=ZOO_NAME, backend=config.backend, force=config.force,
                    keep_other_entries=False, progress=config.progress)
    seconds["train"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    stale = prune_dataset(config.dataset_path, {c.model_id for c in plan}, ZOO_NAME)
    if stale:
        log.info("removed %d models no longer in the demo zoo from %s", len(stale), config.dataset_path)
    probe = None
    if config.probe_images:
        from pipeline.probe.config import ProbeConfig

        probe = ProbeConfig(data="synthetic", n_images=config.probe_images, eps=config.eps)
    build = build_zoo(config.zoo_path, config.dataset_path, backend=config.backend, device=config.device,
                      force=config.force, progress=config.progress, command="demo", probe=probe)
    seconds["build"] = time.perf_counter() - t1
    if build.failed or build.probe_failed:
        raise BuildFailedError(f"the build failed for {build.failed} demo models: {build.text()}")

    t2 = time.perf_counter()
    directions = paper_directions(config.dataset_path, ZOO_NAME)
    write_directions_csv(directions, os.path.join(config.out, "directions.csv"))
    report, stats_text = None, ""
    if config.stats and stats_available():
        import pandas as pd

        from pipeline.stats.run import run_stats, summary_text

        frame = pd.DataFrame([dataclasses.asdict(d) for d in directions])
        result = run_stats(config.dataset_path, config.report_path, extra_tables={"demo_directions": frame})
        for note in result.notes:
            log.warning("%s", note)
        stats_text = summary_text(result, config.report_path)  # printed by the demo after its own summary
        report = config.report_path
    elif config.stats:
        log.warning("filterlens stats is not part of this installation; skipping the report")
    seconds["stats"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    return DemoResult(zoo, build.text(), directions, report, seconds, stats_text)
