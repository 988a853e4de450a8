"""``StatsOptions``: what ``filterlens stats`` selects and how it compares, checked on creation.

Light on purpose: the CLI reads its defaults at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import ConfigError
from pipeline.zoo.spec import THREAT_MODELS


@dataclass
class StatsOptions:
    """What to select and how to compare (the flags of ``filterlens stats``)."""

    where: str | None = None
    datasets: list[str] = field(default_factory=list)
    threat_models: list[str] = field(default_factory=list)
    include_corruptions: bool = False
    pairs_csv: str | None = None
    kl_groups: str = "pairs"
    coef_range: tuple[float, float] | None = None
    gallery: list[str] = field(default_factory=list)
    gallery_pairs: int = 2
    alpha: float = 0.05
    min_models: int = 3
    min_correlation_models: int = 5
    permutations: int = 199
    threads: int | None = None
    seed: int = 0
    figures: bool = True
    engine: str = "auto"

    @property
    def corruptions_included(self) -> bool:
        """Corruption-robust models join the robust pool (--include-corruptions or --threat-models corruptions)."""
        return self.include_corruptions or "corruptions" in self.threat_models

    def robust_threat_models(self) -> list[str]:
        """The threat models the robust pool is limited to ([]: no limit beyond leaving corruptions out)."""
        if self.threat_models and self.include_corruptions and "corruptions" not in self.threat_models:
            return [*self.threat_models, "corruptions"]
        return list(self.threat_models)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.threat_models) - set(THREAT_MODELS))
        if unknown:
            raise ConfigError(f"--threat-models {' '.join(unknown)}: not a threat model (one of "
                              f"{', '.join(THREAT_MODELS)})")
        if self.engine not in ("auto", "numba", "duckdb"):
            raise ConfigError(f"--engine must be auto, numba or duckdb, not {self.engine!r}")
        from pipeline.stats.shift import numba_available  # numpy, pyarrow: not at CLI start-up

        if self.engine == "numba" and not numba_available():
            raise ConfigError("--engine numba: numba is not installed (pip install numba) ; use --engine duckdb")
        if self.kl_groups not in ("pairs", "all"):
            raise ConfigError(f"--kl-groups must be 'pairs' or 'all', not {self.kl_groups!r}")
        if self.coef_range is not None and not self.coef_range[1] > self.coef_range[0]:
            raise ConfigError(f"--coef-range LO HI needs LO < HI, got {self.coef_range}")
