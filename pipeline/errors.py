"""One exception type per failure class.

Every error a user can cause or meet carries a one-line message saying what went
wrong, for which model or file, and what to do. ``stage`` says where in the
per-model flow it belongs (download, load, bind, extract, write); ``transient``
says whether retrying can help; ``exit_code`` is what the CLI returns.
"""

from __future__ import annotations


class FilterlensError(Exception):
    """Base class of all errors filterlens raises on purpose."""

    stage = "extract"
    transient = False
    exit_code = 1

    def __init__(self, message: str = "", attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


# --- checkpoint loading (stage "load") -------------------------------------------------
class CheckpointError(FilterlensError):
    """A checkpoint could not be turned into tensors."""

    stage = "load"
    exit_code = 3


class CheckpointNotFoundError(CheckpointError):
    """The checkpoint path does not exist."""


class CorruptCheckpointError(CheckpointError):
    """The file has a checkpoint's format but is truncated or damaged."""


class NotACheckpointError(CheckpointError):
    """The file is not in any supported checkpoint format."""


class UnsafeCheckpointError(CheckpointError):
    """Unpickling would need arbitrary code (globals outside the allow-list)."""


class NoConvWeightsError(CheckpointError):
    """The checkpoint holds no 2D convolution weights."""


class FilterDBFormatError(CheckpointError):
    """A published filter database (onnxzoo2filterdb layout: dataset.h5 and its CSVs) is not in that layout:
    a missing key or column, filter ranges that overlap or leave gaps, filter counts that disagree with
    in_channels x out_channels, NaN/Inf filters, or metadata that would need unsafe unpickling."""


# --- architecture binding (stage "bind") -----------------------------------------------
class ArchitectureError(FilterlensError):
    """The weights could not be bound to the requested architecture."""

    stage = "bind"
    exit_code = 3


class UnknownArchitectureError(ArchitectureError):
    """The --arch spec names no architecture that can be instantiated here."""


class ArchitectureBuildError(ArchitectureError):
    """The --arch spec names a known architecture, but its code failed to build the network here."""


class ExtractionTimeoutError(FilterlensError):
    """Extracting one model took longer than the per-model limit (e.g. architecture code that hangs)."""

    stage = "extract"
    transient = False
    exit_code = 3


class ArchitectureMismatchError(ArchitectureError):
    """The state dict does not fit the architecture (missing/unexpected keys, shapes)."""


class ForwardPassError(ArchitectureError):
    """The dummy forward pass used to order the conv layers failed."""


# --- downloads (stage "download") ------------------------------------------------------
class DownloadError(FilterlensError):
    """Fetching a checkpoint failed."""

    stage = "download"
    transient = True
    exit_code = 3


class SourceNotFoundError(DownloadError):
    """The source answered that the checkpoint does not exist (e.g. HTTP 404)."""

    transient = False


class RefusedDownloadError(DownloadError):
    """The server answered, but not with the file (access denied, quota page, login page)."""

    transient = False


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes do not have the expected sha256."""

    transient = False


class CheckpointTooLargeError(DownloadError):
    """The file is larger than the size cap (announced or streamed); retrying gives the same file."""

    transient = False


class StalledDownloadError(DownloadError):
    """Bytes arrived slower than the minimum rate over the rate window."""


class DownloadDeadlineError(DownloadError):
    """The download was not done within its deadline."""


class SizeMismatchError(DownloadError):
    """The bytes received do not add up to the size the server announced; the partial file was discarded."""


# --- Google Drive answers (stage "download"; pipeline/fetch/gdrive.py) ------------------
class DriveQuotaError(DownloadError):
    """Google Drive refuses for now (its quota page, HTTP 429, a 403 rate limit); retrying later helps."""

    transient = True

    def __init__(self, message: str = "", attempts: int = 1, retry_after: float | None = None) -> None:
        super().__init__(message, attempts)
        self.retry_after = retry_after
        """Seconds the server asked to wait (``Retry-After``), if it said."""


class DrivePermissionError(RefusedDownloadError):
    """Google Drive asks to sign in or request access: the file is not shared with anyone who has the link."""


class DriveNotFoundError(SourceNotFoundError):
    """Google Drive has no file with this id (HTTP 404, or it was deleted)."""


class DrivePageError(RefusedDownloadError):
    """Google Drive sent a page with no way to the file, or bytes that are not a checkpoint."""


# --- dataset / store (stage "write") ---------------------------------------------------
class StoreError(FilterlensError):
    """Reading or writing the dataset failed."""

    stage = "write"
    transient = True
    exit_code = 4


class DatasetNotFoundError(StoreError):
    """The dataset root has no filter dataset in it."""

    transient = False


class SchemaMismatchError(StoreError):
    """Files in the dataset do not match the schemas in schemas/."""

    transient = False


# --- publishing to the Hugging Face Hub (stage "publish") ------------------------------
class PublishError(FilterlensError):
    """Publishing the dataset to a Hub repo failed (network, server); rerunning resumes it."""

    stage = "publish"
    transient = True
    exit_code = 4


class HubAuthError(PublishError):
    """No Hugging Face token, or the Hub rejected it (invalid, or no write access to the repo)."""

    transient = False
    exit_code = 2


class HubConflictError(PublishError):
    """The repo changed while we were publishing (another writer); rerun to continue on top of it."""


class HubLimitError(PublishError):
    """The dataset does not fit the Hub's repo limits (files per folder or per repo)."""

    transient = False


# --- configuration and queries ---------------------------------------------------------
class ConfigError(FilterlensError):
    """Bad command-line or zoo-file input."""

    stage = "config"
    exit_code = 2


class UntrustedCodeError(ConfigError):
    """A zoo file names architecture code (``module:factory``) the user has not agreed to run."""


class SchedulingError(FilterlensError):
    """The cluster cannot run the work as asked (e.g. no GPU for GPU actors, actors never start)."""

    stage = "config"
    exit_code = 2


class QueryError(FilterlensError):
    """A SQL query was rejected or failed."""

    stage = "query"
    exit_code = 5


# --- statistics -----------------------------------------------------------------------
class StatsError(FilterlensError):
    """The robustness statistics could not be computed from the selection."""

    stage = "stats"
    exit_code = 6


class EmptySelectionError(StatsError):
    """The selection (--where, --datasets, --threat-models) matches no model."""


def describe(exc: BaseException) -> tuple[str, str, bool]:
    """Return (stage, error class name, transient) for any exception.

    Unexpected exceptions are attributed to the extract stage and treated as
    deterministic, except the OS/network errors that retrying can fix.
    """
    if isinstance(exc, FilterlensError):
        return exc.stage, getattr(exc, "error_class", type(exc).__name__), exc.transient
    transient = isinstance(exc, (ConnectionError, TimeoutError))
    return "extract", type(exc).__name__, transient


# --- training (stage "train") ----------------------------------------------------------
class TrainingError(FilterlensError):
    """Training a model failed (diverged, or its task raised)."""

    stage = "train"
    exit_code = 3


class BuildFailedError(FilterlensError):
    """Some models of a build that had to succeed as a whole (the demo's) failed; see failures/."""

    exit_code = 3


# --- the first-stage probe (stage "probe"; pipeline/probe/) -------------------------------
class ProbeError(FilterlensError):
    """Probing a model's first convolution stage failed."""

    stage = "probe"
    exit_code = 3


class ProbeDataError(ProbeError):
    """The probe images cannot be read, or do not fit the model (missing folder, image size, labels)."""

    exit_code = 2


class ProbeUnavailableError(ProbeError):
    """The model cannot be run (no architecture given, an ONNX graph): only bound models can be probed."""
