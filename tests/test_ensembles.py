"""Ensembles keep per-member structure: member, member_robust, depth per member, n_members; old-schema datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import save
from stats_fixtures import planted_zoo
from zoo_fixtures import tiny_ensemble

from pipeline.checkpoints.bind import non_adversarial_members
from pipeline.checkpoints.load import ConvWeight
from pipeline.checkpoints.trace import assign_members
from pipeline.dataset.query import open_dataset
from pipeline.dataset.store import DatasetStore
from pipeline.errors import ArchitectureMismatchError, ConfigError
from pipeline.extract.extractor import extract_model
from pipeline.stats.options import StatsOptions
from pipeline.stats.run import run_stats
from pipeline.stats.selection import select_models
from pipeline.zoo.spec import ModelRequest

TRACED = ("conv1", "depthwise", "conv3", "skip")
"""TinyNet's convs in the order they run (``unused`` never does)."""
STATE_DICT_ORDER = ("conv1", "depthwise", "skip", "conv3", "unused")
LAYER_SQL = "SELECT member, member_robust, layer_name, conv_index, conv_depth_norm FROM layers ORDER BY member, conv_index"


def _member_files(tmp_path: Path, seed: int = 1) -> tuple[torch.nn.Module, list[str]]:
    torch.manual_seed(seed)
    ensemble = tiny_ensemble()
    return ensemble, [str(save(m.state_dict(), tmp_path / f"m{i}.pt")) for i, m in enumerate(ensemble.models)]


def _extract(tmp_path: Path, model_id: str, checkpoints: list[str], **kwargs: object) -> str:
    root = str(tmp_path / "ds")
    extract_model(ModelRequest(model_id, checkpoints=checkpoints, dataset="cifar10", **kwargs), DatasetStore(root),
                  device="cpu", progress=False)
    return root


def test_two_member_ensemble_counts_depth_per_member(tmp_path: Path) -> None:
    ensemble, files = _member_files(tmp_path)
    root = _extract(tmp_path, "ens", files, arch="zoo_fixtures:tiny_ensemble", robust=True, threat_model="Linf")
    with open_dataset(root) as ds:
        layers = ds.sql(LAYER_SQL).fetchall()
        model = ds.sql("SELECT n_members, n_ensemble_members, n_conv_layers, n_conv3x3_layers FROM models").fetchall()
        w = ds.sql("SELECT w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM filters WHERE member = 1 AND conv_index = 0 "
                   "AND out_channel = 2 AND in_channel = 1").fetchall()
        per_member = ds.sql("SELECT member, count(*) FROM filters GROUP BY ALL ORDER BY ALL").fetchall()
        select_models(ds, StatsOptions())
        buckets = ds.con.execute("SELECT member, conv_index, depth_bucket FROM selected_layers ORDER BY ALL").fetchall()
    assert layers == [(m, True, f"models.{m}.{name}", i, i / 3) for m in (0, 1) for i, name in enumerate(TRACED)]
    assert model == [(2, 2, 8, 6)]
    assert np.array_equal(np.array(w[0], np.float32), ensemble.models[1].conv1.weight[2, 1].detach().reshape(-1).numpy())
    assert per_member == [(0, 8 * 3 + 8 + 16 * 8), (1, 8 * 3 + 8 + 16 * 8)]
    # both members' first conv alone in bucket "0"; 1/3, 2/3 and 1 in the deciles 4, 7 and 10
    assert buckets == [(m, i, b) for m in (0, 1) for i, b in enumerate((0, 4, 7, 10))]


@pytest.mark.parametrize("one_file", [False, True])
def test_state_dict_order_knows_each_tensors_member(tmp_path: Path, one_file: bool) -> None:
    ensemble, files = _member_files(tmp_path)
    if one_file:  # a one-file ensemble: a list of state dicts
        files = [str(save([m.state_dict() for m in ensemble.models], tmp_path / "ens.pt"))]
    root = _extract(tmp_path, "ens", files, robust=True, threat_model="Linf")
    with open_dataset(root) as ds:
        layers = ds.sql(LAYER_SQL).fetchall()
        n_members = ds.sql("SELECT n_members, n_ensemble_members, depth_source FROM models").fetchall()
    assert layers == [(m, True, f"members.{m}.{name}", i, i / 4) for m in (0, 1)
                      for i, name in enumerate(STATE_DICT_ORDER)]
    assert n_members == [(2, 2, "state_dict")]


def test_single_models_are_member_zero(tmp_path: Path) -> None:
    ensemble, files = _member_files(tmp_path)
    root = _extract(tmp_path, "one", files[:1], arch="zoo_fixtures:tiny_net")
    with open_dataset(root) as ds:
        layers = ds.sql(LAYER_SQL).fetchall()
        assert ds.sql("SELECT n_members, n_ensemble_members FROM models").fetchall() == [(1, 1)]
        assert ds.sql("SELECT DISTINCT member FROM filters").fetchall() == [(0,)]
    assert layers == [(0, False, name, i, i / 3) for i, name in enumerate(TRACED)]


def test_declared_and_known_non_robust_members(tmp_path: Path) -> None:
    _, files = _member_files(tmp_path)
    root = _extract(tmp_path / "a", "declared", files, arch="zoo_fixtures:tiny_ensemble", robust=True,
                    threat_model="Linf", metadata={"non_robust_members": [0]})
    with open_dataset(root) as ds:
        assert ds.sql("SELECT member, bool_and(member_robust), bool_or(member_robust) FROM layers "
                      "GROUP BY ALL ORDER BY ALL").fetchall() == [(0, False, False), (1, True, True)]
    # without --arch, a RobustBench model_id names the entry: MixedNUTS's first file is its accurate base model
    root = _extract(tmp_path / "b", "robustbench/cifar10/Linf/Bai2024MixedNUTS", files, robust=True,
                    threat_model="Linf")
    with open_dataset(root) as ds:
        assert ds.sql("SELECT member, bool_and(member_robust), bool_or(member_robust) FROM layers "
                      "GROUP BY ALL ORDER BY ALL").fetchall() == [(0, False, False), (1, True, True)]
    with pytest.raises(ConfigError, match="non_robust_members must list member indices 0..1"):
        _extract(tmp_path / "c", "bad", files, metadata={"non_robust_members": [2]})


def test_known_non_adversarial_members_of_the_catalog() -> None:
    assert non_adversarial_members("Bai2024MixedNUTS") == (0,)  # std_model
    assert non_adversarial_members("Bai2023Improving_edm") == (0,)  # comp_model.models.0, the "STD" classifier
    assert non_adversarial_members("Bai2023Improving_trades") == (0,)
    assert non_adversarial_members("Chen2020Adversarial") == ()
    assert non_adversarial_members("Diffenderfer2021Winning_LRR_CARD_Deck") == ()


class _Aliased(torch.nn.Module):
    """Members reachable under two names (as Chen2020AdversarialNet's branch<i> = models[i]), a mixing
    network bound from two state dicts, and a stem outside every member."""

    def __init__(self) -> None:
        super().__init__()
        self.branch1, self.branch2 = (torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)) for _ in range(2))
        self.models = torch.nn.ModuleList([self.branch1, self.branch2])
        self.policy_net = torch.nn.Conv2d(3, 1, 3)
        self.bn = torch.nn.BatchNorm2d(1)
        self.stem = torch.nn.Conv2d(3, 3, 3)


def test_a_conv_belongs_to_the_member_whose_submodule_holds_it() -> None:
    model = _Aliased()
    names = ["branch2.0", "policy_net", "branch1.0"]  # named_modules' names: the first one of each module
    convs = [ConvWeight(n, model.get_submodule(n).weight) for n in names]
    layout = [("models.0",), ("models.1",), ("policy_net", "bn")]
    assign_members(model, convs, layout)
    assert [c.member for c in convs] == [1, 2, 0]
    with pytest.raises(ArchitectureMismatchError, match="conv stem runs but belongs to none"):
        assign_members(model, [ConvWeight("stem", model.stem.weight)], layout)


# --- datasets written under schema version 1 ---------------------------------------------------------
ADDED = {"models": ["n_members"], "layers": ["member", "member_robust"], "filters": ["member"]}
"""The columns schema version 2 added."""


def downgrade(root: Path, slugs: set[str] | None = None) -> None:
    """Rewrite the files of the models ``slugs`` (all: None) as schema version 1 wrote them."""
    for table, dropped in ADDED.items():
        for path in sorted((root / table).rglob("*.parquet")):
            if slugs is not None and not any(s in str(path) for s in slugs):
                continue
            data = pq.read_table(path, partitioning=None)
            data = data.drop_columns([c for c in dropped if c in data.column_names])
            if table == "models":
                data = data.set_column(data.column_names.index("schema_version"), "schema_version",
                                       pa.array([1] * data.num_rows, pa.int32()))
            pq.write_table(data, path)
    for index in (root / "_index").glob("*"):
        index.unlink()


def test_an_old_schema_dataset_reads_with_null_members(tmp_path: Path, cli: object) -> None:
    _, files = _member_files(tmp_path)
    root = _extract(tmp_path, "ens", files, arch="zoo_fixtures:tiny_ensemble", robust=True, threat_model="Linf")
    sha = DatasetStore(root).models().to_pylist()[0]["checkpoint_sha256"]
    downgrade(Path(root))
    assert not DatasetStore(root).is_complete("ens", sha)  # a rebuild redoes it under the current schema
    with open_dataset(root) as ds:
        assert ds.sql("SELECT n_members, n_ensemble_members FROM models").fetchall() == [(None, 2)]
        assert ds.sql("SELECT member, member_robust, count(*) FROM layers GROUP BY ALL").fetchall() == [
            (None, None, 8)]
        assert ds.sql("SELECT count(*) FROM filters WHERE member IS NULL").fetchall() == [(2 * 160,)]
        assert ds.lazy("layers").select("member").collect().to_series().null_count() == 8
    res = cli("sql", root, "SELECT count(*) AS n FROM layers l JOIN models m USING (model_id) WHERE l.member IS NULL",
              "--format", "csv")
    assert res.code == 0, res.err
    assert res.out.split() == ['"n"', "8"]
    assert not DatasetStore(root).complete_models()


def test_a_mixed_old_and_new_dataset_gives_the_same_stats(tmp_path: Path) -> None:
    planted_zoo(tmp_path / "new", n_per_side=3)
    planted_zoo(tmp_path / "mixed", n_per_side=3)
    downgrade(tmp_path / "mixed", {f"zoo--cifar10--robust{i}" for i in range(3)} | {"zoo--cifar10--normal0"})
    options = StatsOptions(permutations=0, figures=False)
    new = run_stats(str(tmp_path / "new"), str(tmp_path / "r_new"), options)
    mixed = run_stats(str(tmp_path / "mixed"), str(tmp_path / "r_mixed"), StatsOptions(
        permutations=0, figures=False, engine="duckdb"))
    for table in ("depth_profile", "robust_vs_normal", "distribution_shift", "coefficient_histograms"):
        columns = [c for c in new.tables[table].columns if c != "p_value"]
        np.testing.assert_allclose(mixed.tables[table][columns].select_dtypes("number").to_numpy(float),
                                   new.tables[table][columns].select_dtypes("number").to_numpy(float), rtol=1e-9)
    with open_dataset(str(tmp_path / "mixed")) as ds:
        assert ds.sql("SELECT member IS NULL, count(DISTINCT model_id) FROM layers GROUP BY ALL ORDER BY ALL"
                      ).fetchall() == [(False, 2), (True, 4)]
