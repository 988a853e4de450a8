"""Hub and network failures as filterlens errors: one clear line each, saying what to do next."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pipeline.errors import FilterlensError, HubAuthError, HubConflictError, PublishError

RESUME = "rerun the same command to resume (files already on the Hub are not sent again)"


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error, looking through wrapping exceptions."""
    from huggingface_hub.errors import HfHubHTTPError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            return exc.response.status_code
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _status_error(status: int | None, exc: BaseException, endpoint: str, repo_id: str, token_origin: str,
                  revision: str) -> FilterlensError:
    """The filterlens error for a failed Hub request with HTTP ``status``."""
    if status == 401:
        return HubAuthError(f"{endpoint} rejected the token from {token_origin} (401 Unauthorized): it is invalid "
                            f"or expired; create a write token at {endpoint}/settings/tokens and pass --token or "
                            "set HF_TOKEN")
    if status == 403:
        return HubAuthError(f"the token from {token_origin} may not write to {repo_id} on {endpoint} "
                            f"(403 Forbidden): use a token with write access to {repo_id.split('/')[0]}")
    if status in (409, 412):
        return HubConflictError(f"{repo_id}@{revision} changed on {endpoint} while publishing (another writer?); "
                                "rerun to publish on top of the new state")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return PublishError(f"{repo_id}: the Hub at {endpoint} answered {status or 'with an error'} ({first}); "
                        f"{RESUME}")


@contextlib.contextmanager
def hub_errors(endpoint: str, repo_id: str, token_origin: str, revision: str = "main") -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into filterlens errors with one clear line each."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    context = (endpoint, repo_id, token_origin, revision)
    try:
        yield
    except FilterlensError:
        raise
    except HfHubHTTPError as exc:
        raise _status_error(_http_status(exc), exc, *context) from exc
    except (RuntimeError, ValueError) as exc:  # huggingface_hub wraps failed uploads / reports bad input this way
        status = _http_status(exc)
        if status is not None:
            raise _status_error(status, exc, *context) from exc
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, (OSError, httpx2.HTTPError)):
            raise PublishError(f"{repo_id}: cannot reach {endpoint} ({type(cause).__name__}: {cause}); "
                               f"{RESUME}") from exc
        if isinstance(exc, ValueError):
            raise PublishError(f"{repo_id}: {(str(exc).splitlines() or ['invalid request'])[0]}") from exc
        raise
    except (OSError, httpx2.HTTPError) as exc:
        raise PublishError(f"{repo_id}: cannot reach {endpoint} ({type(exc).__name__}: {exc}); check the network "
                           f"or HF_ENDPOINT, then {RESUME}") from exc
