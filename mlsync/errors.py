"""Every exception mlsync raises on purpose, in one tree.

Catch ``MLSyncError`` to handle anything mlsync reports; catch a narrower class to act on one
cause. Messages are written for a person: they say what went wrong and what to do next, and
never contain an API key (URLs are redacted before they reach a message).

::

    MLSyncError
    ├── ConfigurationError            bad settings before any work starts
    │   ├── APIKeyNotFound            no key from argument, environment or profile (also an
    │   │                             MLHubError, as the reference's was an MLHubException)
    │   ├── ManifestError             mlsync.yaml is invalid (file:line:col, field)
    │   └── FilterError               contradictory or malformed filters (also a ValueError)
    ├── MLHubError                    the hub answered, or failed to, in a way we cannot use
    │   ├── AuthenticationError       401/403: missing, wrong or unauthorised key
    │   ├── EntityDoesNotExist        404 on a dataset, collection, item or catalog
    │   ├── HubConnectionError        DNS, refused, reset or timed out, after retries
    │   ├── HubServerError            5xx or 429 that outlasted every retry
    │   ├── HubResponseError          HTML, invalid JSON, or JSON of the wrong shape
    │   ├── HubPathNotFound           404 from the API root itself: a wrong root URL path
    │   └── HubHTTPError              4xx/5xx to mlsync.session.Session (also requests'
    │       │                         HTTPError, with .response, as requests' callers expect)
    │       ├── HubHTTPAuthError      401/403 there (also an AuthenticationError)
    │       └── HubHTTPNotFoundError  404 there (also an EntityDoesNotExist)
    ├── CatalogError                  the dataset's STAC catalog cannot be used
    │   └── UnsafePathError           a member, id or key would escape the output directory
    ├── LocalWriteError               the output tree cannot be written (full, denied, gone)
    │   └── ObjectStoreError          an s3:// output tree: endpoint, credentials, bucket
    ├── StateError                    local state stops the run
    │   ├── LockHeldError             another apply holds the output directory's lock
    │   ├── StalePlanError            a saved plan no longer matches the catalog or disk
    │   └── FrozenLockError           --frozen, and the hub no longer matches mlsync.lock
    └── TransferError                 one asset could not be downloaded (kept per asset)
        └── DownloadFailed            the run ended with failures listed in err_report.csv

``MLHubException`` is kept as an alias of ``MLHubError`` for code written against the
reference client (radiant-mlhub 0.5.5), whose four exceptions all derived from it: every one
of those names (``MLHubException``, ``AuthenticationError``, ``APIKeyNotFound``,
``EntityDoesNotExist``, also importable from :mod:`mlsync.exceptions`) is still caught by
``except MLHubException``. ``APIKeyNotFound`` is therefore both a ``ConfigurationError`` and
an ``MLHubError`` (multiple inheritance, not an alias: ``except ConfigurationError`` keeps
catching every bad setting).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import requests

__all__ = [
    "APIKeyNotFound",
    "AuthenticationError",
    "CatalogError",
    "ConfigurationError",
    "DownloadFailed",
    "EntityDoesNotExist",
    "FilterError",
    "FrozenLockError",
    "HubConnectionError",
    "HubHTTPAuthError",
    "HubHTTPError",
    "HubHTTPNotFoundError",
    "HubPathNotFound",
    "HubResponseError",
    "HubServerError",
    "LocalWriteError",
    "LockHeldError",
    "MLHubError",
    "MLHubException",
    "MLSyncError",
    "ManifestError",
    "ObjectStoreError",
    "StalePlanError",
    "StateError",
    "TransferError",
    "UnsafePathError",
]


class MLSyncError(Exception):
    """Base class of every error mlsync raises on purpose."""


class ConfigurationError(MLSyncError):
    """Settings are missing or invalid; nothing was sent or written."""


class ManifestError(ConfigurationError):
    """A manifest is invalid. ``location`` is ``file:line:col`` when it is known."""

    def __init__(self, message: str, *, location: str | None = None, field: str | None = None):
        self.location = location
        self.field = field
        self.detail = message
        prefix = f"{location}: " if location else ""
        where = f"{field}: " if field else ""
        super().__init__(f"{prefix}{where}{message}")


class FilterError(ConfigurationError, ValueError):
    """Download filters contradict each other or are malformed (e.g. bbox with intersects)."""


class MLHubError(MLSyncError):
    """The hub could not give a usable answer."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None):
        self.status = status
        self.url = url
        super().__init__(message)


MLHubException = MLHubError


class APIKeyNotFound(ConfigurationError, MLHubError):
    """No API key could be resolved from the argument, the environment or a profile.

    A ``ConfigurationError`` (nothing was sent) and, as in the reference client, an
    ``MLHubException`` (``MLHubError``), so code that caught it that way still does.
    """


class AuthenticationError(MLHubError):
    """The hub refused the request's credentials (401 or 403)."""


class EntityDoesNotExist(MLHubError, LookupError):
    """The hub has no such dataset, collection, item or catalog (404)."""


class HubConnectionError(MLHubError):
    """The hub could not be reached, or stopped answering, even after retries."""


class HubServerError(MLHubError):
    """The hub kept answering with a server error or rate limit after every retry."""


class HubResponseError(MLHubError):
    """The hub answered with something that is not the JSON the API promises."""


class HubHTTPError(MLHubError, requests.HTTPError):
    """A 4xx/5xx answer to a request of :class:`mlsync.session.Session`, after its retries.

    That session is a ``requests.Session``, so this is also requests' ``HTTPError`` with the
    ``response`` (``e.response.status_code``, ``e.response.json()``), as code written for
    requests and the reference client catches it; and an ``MLHubError`` like the rest.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        url: str | None = None,
        response: requests.Response | None = None,
    ) -> None:
        super().__init__(message, status=status, url=url)
        self.response = response
        self.request = None if response is None else response.request


class HubHTTPAuthError(AuthenticationError, HubHTTPError):
    """401/403 to :class:`mlsync.session.Session`: an ``AuthenticationError`` and an
    ``HTTPError`` at once."""


class HubHTTPNotFoundError(EntityDoesNotExist, HubHTTPError):
    """404 to :class:`mlsync.session.Session`: an ``EntityDoesNotExist`` and an ``HTTPError``
    at once."""


class HubPathNotFound(MLHubError):
    """A 404 from a URL where the API itself is missing (its dataset listing answers 404
    too): the root URL's path is wrong, whatever was asked for. Not an
    ``EntityDoesNotExist``: nothing is known about the dataset."""


class CatalogError(MLSyncError):
    """The dataset's STAC catalog (archive or JSON) is broken or unusable."""


class UnsafePathError(CatalogError):
    """A path built from untrusted input would land outside the output directory."""


class LocalWriteError(MLSyncError):
    """Writing under the output directory failed: disk full, permission denied, or vanished.

    Nothing already complete is lost; the run stops because every other asset would fail too.
    """

    RESUME_ADVICE = (
        "Files already complete are kept; free space or fix permissions, then run apply "
        "again to resume"
    )

    @classmethod
    def from_os_error(
        cls,
        exc: OSError,
        path: Path | str,
        *,
        what: str = "",
        action: str = "write",
        advice: str = RESUME_ADVICE,
    ) -> LocalWriteError:
        """``cannot {action} {what} {path}: {reason}. {advice}``, the reason in plain words."""
        detail = exc.strerror or str(exc)
        plain = _OS_REASONS.get(exc.errno or 0)
        reason = f"{plain} ({detail})" if plain and exc.strerror else plain or detail
        subject = f"{what} {path}" if what else str(path)
        return cls(f"cannot {action} {subject}: {reason}. {advice}")


_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file is larger than this file system or process allows",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOENT: "the output directory vanished",
    errno.ELOOP: "it is a symbolic link, which mlsync never writes through",
}


class ObjectStoreError(LocalWriteError):
    """An ``s3://`` output tree cannot be used: the endpoint is unreachable, the credentials
    are refused, the bucket is missing or not writable. One line, never a secret."""


class StateError(MLSyncError):
    """Local state (lock, saved plan, lock file) stops the run."""


class LockHeldError(StateError):
    """Another live process holds the output directory's lock."""


class StalePlanError(StateError):
    """A saved plan was made against a catalog or disk state that has since changed."""


class FrozenLockError(StateError):
    """``--frozen`` was given and the hub's catalog no longer matches ``mlsync.lock``."""


class TransferError(MLSyncError):
    """One asset could not be transferred; ``status`` is the HTTP status when there was one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
    ):
        self.status = status
        self.retryable = retryable
        super().__init__(message)


class DownloadFailed(TransferError):
    """Some assets failed for good; they are listed in ``report`` (err_report.csv)."""

    def __init__(self, message: str, *, failed: int, report: Path, result: Any = None):
        self.failed = failed
        self.report = report
        self.result = result
        """What the run did complete (a ``DatasetResult``), for summaries."""
        super().__init__(message)
