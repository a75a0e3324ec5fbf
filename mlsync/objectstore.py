"""S3-compatible object storage: the operations an ``s3://bucket/prefix`` output tree needs.

Two client libraries, each where it was measured to fit (see the README, "Object-store
output"): obstore (Rust, ``object_store``) for the many small requests — PutObject with
``If-None-Match: *`` or ``If-Match``, HEAD, LIST, GET, DELETE — 300 sequential 4 KiB PUTs
take 0.45 s against boto3's 0.76 s on the local SeaweedFS; and boto3 for multipart uploads
only, because a resume across processes needs the upload id and ListParts, which obstore's
multipart API does not expose.

Credentials come from the standard AWS variables or a profile; they are registered with the
log redaction and never appear in a message, a plan, a lock file or a report. Every failure
of the store itself (endpoint unreachable, credentials refused, bucket missing or not
writable) is one :class:`ObjectStoreError` line; a lost race against another writer is a
:class:`ConditionFailed` for that one object.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

from mlsync.errors import ConfigurationError, ObjectStoreError, TransferError
from mlsync.hub.http import one_line, redact, register_secret

S3_SCHEME = "s3://"
SHA256_META = "sha256"
"""The user-metadata key (``x-amz-meta-sha256``) holding an object's content sha256: an ETag
is not a content hash (multipart ETags, encrypted buckets), so it is never used as one."""
DEFAULT_REGION = "us-east-1"


def is_s3_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(S3_SCHEME)


@dataclass(frozen=True, slots=True)
class S3Location:
    """``s3://bucket/prefix``: a bucket and a key prefix (no leading or trailing slash)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ConfigurationError(
                f"{url!r} is not an object-store location: write s3://bucket or s3://bucket/prefix"
            )
        prefix = parts.path.strip("/")
        if any(segment in ("", ".", "..") for segment in prefix.split("/")) and prefix:
            raise ConfigurationError(f"{url!r}: the prefix has an empty, '.' or '..' segment")
        return cls(parts.netloc, prefix)

    def key(self, rel: str) -> str:
        """The object key of a path relative to this location."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        """The path relative to this location of one of its keys."""
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.key(name))

    def url(self, rel: str = "") -> str:
        key = self.key(rel) if rel else self.prefix
        return f"{S3_SCHEME}{self.bucket}/{key}" if key else f"{S3_SCHEME}{self.bucket}"

    def __str__(self) -> str:
        return self.url()


@dataclass(frozen=True)
class ObjectStoreTarget:
    """An ``s3://`` output: where (each dataset below it, at ``{id}/``) and how to connect
    (the credentials themselves are resolved when a run starts, never stored here)."""

    location: S3Location
    endpoint: str | None = None
    profile: str | None = None
    part_size: int = 16 << 20
    """Multipart part size in bytes (an asset up to one part goes in one PutObject)."""

    def credentials(self) -> S3Credentials:
        return S3Credentials.resolve(endpoint=self.endpoint, profile=self.profile)


@dataclass(frozen=True)
class S3Credentials:
    """Where and as whom to connect; the secrets are excluded from ``repr``."""

    endpoint: str | None = None
    region: str = DEFAULT_REGION
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, *, endpoint: str | None = None, profile: str | None = None) -> S3Credentials:
        """The manifest's endpoint, else ``AWS_ENDPOINT_URL``; keys from ``AWS_ACCESS_KEY_ID``
        and ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), else the profile
        (``profile``, else ``AWS_PROFILE``) of the AWS config files."""
        env = os.environ
        endpoint = endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        token = env.get("AWS_SESSION_TOKEN")
        profile = profile or env.get("AWS_PROFILE")
        if profile or not (key and secret):
            key, secret, token, profile_region = _from_profile(profile)
            region = region or profile_region
        for secret_value in (key, secret, token):  # the key id too: never shown either
            register_secret(secret_value)
        return cls(endpoint or None, region or DEFAULT_REGION, key, secret, token)


def _from_profile(profile: str | None) -> tuple[str | None, str | None, str | None, str | None]:
    """Keys and region of an AWS profile (botocore reads the config files); all None when
    there is none."""
    import botocore.exceptions
    import botocore.session

    try:
        session = botocore.session.Session(profile=profile)
        credentials = session.get_credentials()
        region = session.get_config_variable("region")
    except botocore.exceptions.ProfileNotFound:
        raise ConfigurationError(
            f"the AWS profile {profile!r} is not in the AWS config files"
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigurationError(f"cannot read the AWS credentials: {one_line(str(exc))}") from None
    if credentials is None:
        return None, None, None, region
    frozen = credentials.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token, region


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    rel: str
    """The key relative to the store's location."""
    size: int
    etag: str | None
    sha256: str | None = None
    """From the object's metadata (None: not known, or not listed with metadata)."""
    mtime_ns: int = 0


@dataclass(frozen=True, slots=True)
class PendingUpload:
    rel: str
    upload_id: str


class ConditionFailed(TransferError):
    """Another writer created or changed the object since this run looked (HTTP 412/409):
    nothing was overwritten."""


class ObjectStore:
    """One ``s3://bucket/prefix`` location, shared by the worker threads."""

    def __init__(self, location: S3Location, credentials: S3Credentials) -> None:
        self.location = location
        self.credentials = credentials
        self._boto_lock = threading.Lock()
        self._boto_client: Any = None
        from obstore.store import S3Store

        endpoint = credentials.endpoint
        options: dict[str, Any] = {
            "connect_timeout": "10s",
            "timeout": "120s",
            "pool_max_idle_per_host": "64",
        }
        if endpoint and endpoint.startswith("http://"):
            options["allow_http"] = True
        config: dict[str, Any] = {"region": credentials.region}
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
        if credentials.access_key_id and credentials.secret_access_key:
            config["access_key_id"] = credentials.access_key_id
            config["secret_access_key"] = credentials.secret_access_key
            if credentials.session_token:
                config["session_token"] = credentials.session_token
        else:
            config["skip_signature"] = True
        self._store = S3Store(
            location.bucket,
            config=cast(Any, config),
            client_options=cast(Any, options),
            retry_config={"max_retries": 3, "retry_timeout": _timedelta(30.0)},
        )

    # --- checks ---------------------------------------------------------------------------

    def check(self) -> None:
        """Fail with one line when the endpoint, the credentials or the bucket cannot be used
        (a write permission is only known at the first write, which fails the same way)."""
        import obstore

        try:
            stream = obstore.list(self._store, prefix=self._key_prefix(""), chunk_size=1)
            next(iter(stream), None)
        except Exception as exc:
            raise self._error(exc, "list") from None

    # --- reads ----------------------------------------------------------------------------

    def head(self, rel: str) -> ObjectInfo | None:
        """The object with its metadata; None when there is none."""
        client = self._boto()
        try:
            answer = client.head_object(Bucket=self.location.bucket, Key=self.location.key(rel))
        except Exception as exc:
            if _status_of(exc) == 404:
                return None
            raise self._error(exc, "read", rel) from None
        metadata = answer.get("Metadata") or {}
        modified = answer.get("LastModified")
        return ObjectInfo(
            rel,
            int(answer.get("ContentLength", 0)),
            _etag(answer.get("ETag")),
            metadata.get(SHA256_META),
            int(modified.timestamp() * 1e9) if modified is not None else 0,
        )

    def list_objects(self, rel_prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object below ``rel_prefix`` with its size and ETag (no metadata)."""
        import obstore

        try:
            for batch in obstore.list(self._store, prefix=self._key_prefix(rel_prefix)):
                for meta in batch:
                    modified = meta["last_modified"]
                    yield ObjectInfo(
                        self.location.rel(meta["path"]),
                        int(meta["size"]),
                        _etag(meta.get("e_tag")),
                        None,
                        int(modified.timestamp() * 1e9),
                    )
        except Exception as exc:
            raise self._error(exc, "list") from None

    def list_with_metadata(self, rel_prefix: str = "", workers: int = 16) -> list[ObjectInfo]:
        """The listing, each object HEAD-ed for its sha256 metadata (in parallel): how a fresh
        machine learns what an existing bucket holds without downloading a byte of it."""
        listed = [*self.list_objects(rel_prefix)]
        if not listed:
            return []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            heads = list(pool.map(lambda info: self.head(info.rel), listed))
        return [head for head in heads if head is not None]

    def get(self, rel: str) -> bytes | None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return bytes(obstore.get(self._store, self.location.key(rel)).bytes())
        except NotFoundError:
            return None
        except Exception as exc:
            raise self._error(exc, "read", rel) from None

    def iter_bytes(self, rel: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes, streamed (``status --verify`` hashes them)."""
        import obstore

        try:
            result = obstore.get(self._store, self.location.key(rel))
            for chunk in result.stream(min_chunk_size=chunk_size):
                yield bytes(chunk)
        except Exception as exc:
            if type(exc).__name__ == "NotFoundError":
                raise FileNotFoundError(self.location.url(rel)) from None
            raise self._error(exc, "read", rel) from None

    def open_read(self, rel: str) -> BinaryIO:
        """The object as a file to read (streamed); FileNotFoundError when absent."""
        try:
            answer = self._boto().get_object(
                Bucket=self.location.bucket, Key=self.location.key(rel)
            )
        except Exception as exc:
            if _status_of(exc) == 404:
                raise FileNotFoundError(self.location.url(rel)) from None
            raise self._error(exc, "read", rel) from None
        return cast(BinaryIO, answer["Body"])

    # --- writes ---------------------------------------------------------------------------

    def put(
        self,
        rel: str,
        data: bytes | bytearray | memoryview,
        *,
        sha256: str | None,
        if_match: str | None = None,
        overwrite: bool = False,
    ) -> str | None:
        """One PutObject; the new ETag. ``if_match``: replace only that version; else create
        only (``If-None-Match: *``) unless ``overwrite`` (mlsync's own small files)."""
        import obstore

        mode: Any
        if if_match is not None:
            mode = {"e_tag": if_match}
        elif overwrite:
            mode = "overwrite"
        else:
            mode = "create"
        attributes: dict[str, str] = {SHA256_META: sha256} if sha256 else {}
        try:
            result = obstore.put(
                self._store,
                self.location.key(rel),
                data,  # any buffer: obstore reads it without a copy
                mode=mode,
                attributes=cast(Any, attributes),
                use_multipart=False,
            )
        except Exception as exc:
            raise self._error(exc, "write", rel) from None
        return _etag(result.get("e_tag"))

    def delete(self, rel: str) -> None:
        import obstore

        try:
            obstore.delete(self._store, self.location.key(rel))
        except Exception as exc:
            if _status_of(exc) == 404:
                return
            raise self._error(exc, "delete", rel) from None

    # --- multipart (boto3: the upload id and ListParts survive the process) ---------------

    def create_upload(self, rel: str, *, sha256: str | None) -> str:
        metadata = {SHA256_META: sha256} if sha256 else {}
        try:
            answer = self._boto().create_multipart_upload(
                Bucket=self.location.bucket, Key=self.location.key(rel), Metadata=metadata
            )
        except Exception as exc:
            raise self._error(exc, "write", rel) from None
        return str(answer["UploadId"])

    def upload_part(self, rel: str, upload_id: str, number: int, data: bytes | bytearray) -> str:
        try:
            answer = self._boto().upload_part(
                Bucket=self.location.bucket,
                Key=self.location.key(rel),
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
            )
        except Exception as exc:
            raise self._error(exc, "write", rel) from None
        return _etag(answer["ETag"]) or ""

    def list_parts(self, rel: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """Part number -> (ETag, size) of an upload the server still has; None if gone."""
        parts: dict[int, tuple[str, int]] = {}
        marker = 0
        client = self._boto()
        try:
            while True:
                answer = client.list_parts(
                    Bucket=self.location.bucket,
                    Key=self.location.key(rel),
                    UploadId=upload_id,
                    PartNumberMarker=marker,
                )
                for part in answer.get("Parts", []):
                    parts[int(part["PartNumber"])] = (_etag(part["ETag"]) or "", int(part["Size"]))
                if not answer.get("IsTruncated"):
                    return parts
                marker = int(answer["NextPartNumberMarker"])
        except Exception as exc:
            if _status_of(exc) == 404 or _code_of(exc) == "NoSuchUpload":
                return None
            raise self._error(exc, "read", rel) from None

    def complete_upload(
        self,
        rel: str,
        upload_id: str,
        etags: list[str],
        *,
        if_match: str | None = None,
    ) -> str | None:
        """Make the object visible; conditional as :meth:`put` (never an overwrite)."""
        condition = {"IfMatch": if_match} if if_match is not None else {"IfNoneMatch": "*"}
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)]
        try:
            answer = self._boto().complete_multipart_upload(
                Bucket=self.location.bucket,
                Key=self.location.key(rel),
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **condition,
            )
        except Exception as exc:
            raise self._error(exc, "write", rel) from None
        return _etag(answer.get("ETag"))

    def set_sha256(self, rel: str, sha256: str, etag: str | None) -> str | None:
        """Add the sha256 to an object's metadata (a server-side copy onto itself, of that
        version only): for a multipart upload whose sha256 was known only at its end."""
        extra = {"CopySourceIfMatch": etag} if etag else {}
        key = self.location.key(rel)
        try:
            answer = self._boto().copy_object(
                Bucket=self.location.bucket,
                Key=key,
                CopySource={"Bucket": self.location.bucket, "Key": key},
                Metadata={SHA256_META: sha256},
                MetadataDirective="REPLACE",
                **extra,
            )
        except Exception as exc:
            raise self._error(exc, "write", rel) from None
        return _etag(answer.get("CopyObjectResult", {}).get("ETag")) or etag

    def pending_uploads(self, rel_prefix: str = "") -> list[PendingUpload]:
        """Multipart uploads begun below ``rel_prefix`` and neither completed nor aborted."""
        client = self._boto()
        found: list[PendingUpload] = []
        kwargs: dict[str, Any] = {
            "Bucket": self.location.bucket,
            "Prefix": self._key_prefix(rel_prefix),
        }
        try:
            while True:
                answer = client.list_multipart_uploads(**kwargs)
                for upload in answer.get("Uploads", []) or []:
                    found.append(
                        PendingUpload(self.location.rel(upload["Key"]), upload["UploadId"])
                    )
                if not answer.get("IsTruncated"):
                    return found
                kwargs["KeyMarker"] = answer.get("NextKeyMarker")
                kwargs["UploadIdMarker"] = answer.get("NextUploadIdMarker")
        except Exception as exc:
            raise self._error(exc, "list") from None

    def abort_upload(self, rel: str, upload_id: str) -> None:
        try:
            self._boto().abort_multipart_upload(
                Bucket=self.location.bucket, Key=self.location.key(rel), UploadId=upload_id
            )
        except Exception as exc:
            if _status_of(exc) == 404 or _code_of(exc) == "NoSuchUpload":
                return
            raise self._error(exc, "write", rel) from None

    # --- internals ------------------------------------------------------------------------

    def _key_prefix(self, rel_prefix: str) -> str:
        base = self.location.key(rel_prefix) if rel_prefix else self.location.prefix
        return f"{base}/" if base else ""

    def _boto(self) -> Any:
        """One boto3 client for every thread (boto3 clients are thread-safe)."""
        with self._boto_lock:
            if self._boto_client is None:
                import boto3
                from botocore.config import Config

                credentials = self.credentials
                self._boto_client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=credentials.endpoint,
                    region_name=credentials.region,
                    aws_access_key_id=credentials.access_key_id,
                    aws_secret_access_key=credentials.secret_access_key,
                    aws_session_token=credentials.session_token,
                    config=Config(
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=10,
                        read_timeout=120,
                        max_pool_connections=64,
                        s3={"addressing_style": "path"},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                    ),
                )
            return self._boto_client

    def _error(self, exc: BaseException, action: str, rel: str | None = None) -> Exception:
        """The one-line error for a failed request (never a secret: messages are redacted)."""
        where = self.location.url(rel) if rel else self.location.url()
        status, code = _status_of(exc), _code_of(exc)
        name = type(exc).__name__
        endpoint = self.credentials.endpoint or "the AWS S3 endpoint"
        if status in (409, 412) or name in ("PreconditionError", "AlreadyExistsError"):
            return ConditionFailed(
                f"another writer created or changed {where} during this run (the conditional "
                f"{action} failed: {status or 412}); nothing was overwritten",
                status=status or 412,
            )
        if code == "NoSuchBucket" or (status == 404 and action == "list"):
            return ObjectStoreError(
                f"the bucket {self.location.bucket!r} does not exist at {endpoint}; create it "
                "or fix output_dir"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or name in (
            "UnauthenticatedError",
        ):
            return ObjectStoreError(
                f"{endpoint} refused the S3 credentials (access key or secret is wrong); check "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or the AWS profile"
            )
        if status in (401, 403) or name == "PermissionDeniedError":
            verb = {"write": "write to", "delete": "delete from", "list": "list"}.get(
                action, action
            )
            return ObjectStoreError(
                f"the S3 credentials may not {verb} {where} (access denied); use an identity "
                "with read, write and list permission on the bucket"
            )
        if _is_connection_error(exc):
            return ObjectStoreError(
                f"cannot reach the S3 endpoint {endpoint}: {_connection_reason(exc)}; check "
                "the endpoint (AWS_ENDPOINT_URL or the manifest's s3_endpoint)"
            )
        if status is not None and (status >= 500 or status == 429):
            return TransferError(
                f"the S3 server answered {status} to a {action} of {where}",
                status=status,
                retryable=True,
            )
        return ObjectStoreError(redact(f"S3 {action} of {where} failed: {one_line(str(exc), 300)}"))


def _etag(value: object) -> str | None:
    """An ETag in its quoted form, as If-Match sends it (servers differ in what they return)."""
    if value is None:
        return None
    text = str(value)
    return text if text.startswith(('"', "W/")) else f'"{text}"'


def _timedelta(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    text = str(exc)
    for status in (412, 409, 404, 403, 401, 500, 502, 503, 429):
        if f" {status} " in text or f"status code: {status}" in text:
            return status
    return None


def _code_of(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    text = str(exc)
    for code in ("NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchUpload"):
        if code in text:
            return code
    return None


_CONNECTION_HINTS = (
    "connection refused",
    "error sending request",
    "dns error",
    "connect timeout",
    "could not connect",
    "name or service not known",
    "failed to resolve",
    "timed out",
)


def _is_connection_error(exc: BaseException) -> bool:
    import botocore.exceptions

    if isinstance(
        exc,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectTimeoutError
        | botocore.exceptions.ReadTimeoutError,
    ):
        return True
    text = str(exc).lower()
    return any(hint in text for hint in _CONNECTION_HINTS)


def _connection_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "dns" in text or "resolve" in text or "not known" in text:
        return "the host name does not resolve"
    if "timed out" in text or "timeout" in text:
        return "timed out"
    return "no connection"


__all__ = [
    "ConditionFailed",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreTarget",
    "PendingUpload",
    "S3Credentials",
    "S3Location",
    "is_s3_url",
]
