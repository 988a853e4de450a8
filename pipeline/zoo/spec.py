"""What is known about one model before extraction: ``ModelSpec``, threat models, input shapes, the request.

Light on purpose (no torch): zoo files, the CLI and the extractor all import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from pipeline.errors import ConfigError

THREAT_MODELS = ("Linf", "L2", "corruptions", "none")
"""Values of ``models.threat_model``; ``none`` is a normally trained model."""

ADVERSARIAL_THREAT_MODELS = ("Linf", "L2")
"""The threat models of adversarial training: ``robust`` means trained for one of these. Corruption-robust
models keep ``threat_model = corruptions`` with ``robust = false`` (stats leaves them out unless asked)."""


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``3x32x32`` -> (3, 32, 32)."""
    if not text:
        return None
    try:
        shape = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r} must be CxHxW, e.g. 3x32x32")
    return shape


@dataclass
class ModelSpec:
    """What is known about one model before extraction: its identity and the models table's descriptive columns.

    Zoo entries (``zoo_file.ZooEntry``), extraction requests (``ModelRequest``) and
    the training zoo writer all carry exactly these fields.
    """

    model_id: str
    arch: str | None = None
    dataset: str = "unknown"
    threat_model: str = "none"
    robust: bool = False
    input_shape: tuple[int, ...] | None = None
    architecture: str | None = None
    clean_acc: float | None = None
    robust_acc: float | None = None
    eps: float | None = None
    extra_data: bool | None = None
    paper: str | None = None
    venue: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.model_id or not self.model_id.strip():
            raise ConfigError("model_id must not be empty")
        if self.threat_model not in THREAT_MODELS:
            raise ConfigError(f"threat model {self.threat_model!r} is not one of {', '.join(THREAT_MODELS)}")
        if self.robust and self.threat_model == "corruptions":
            raise ConfigError(f"{self.model_id}: robust means adversarially trained (Linf, L2); a corruption-robust "
                              "model keeps threat_model corruptions with robust false")

    def spec(self) -> ModelSpec:
        """Just the ModelSpec part (a copy, metadata included)."""
        values = {f.name: getattr(self, f.name) for f in fields(ModelSpec)}
        return ModelSpec(**{**values, "metadata": dict(self.metadata)})


SPEC_FIELDS = tuple(f.name for f in fields(ModelSpec))
"""The ModelSpec field names, in order."""


@dataclass
class ModelRequest(ModelSpec):
    """A ModelSpec plus its checkpoint file(s), local and ready to extract."""

    checkpoints: list[str] = field(default_factory=list)
    source_uri: str | None = None
    digest: tuple[str, int] | None = None
    """(sha256, bytes) of the checkpoint files when already known (a build's download computed it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.checkpoints, str):
            self.checkpoints = [self.checkpoints]
