"""The S3 store (any S3-compatible endpoint) through boto3; the only module that imports boto3.

Conditional writes use `IfNoneMatch="*"` and `IfMatch=<etag>` (AWS since 2024, MinIO, moto).
Credentials come from the standard boto3 chain (env, profile, SSO, instance role) and are never
read, printed or logged here. Checksum mode is configurable because some S3-compatibles reject
the CRC headers that boto3 >= 1.36 sends by default.
"""

from __future__ import annotations

from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import MapleZooError
from .stores import CHUNK, NotFound, PreconditionFailed, Progress, Store, check_key


class S3Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: Literal["auto", "virtual", "path"] | None = None
    checksum: Literal["when_supported", "when_required"] | None = None
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


def redact_url(url: str | None) -> str | None:
    """Drop `user:password@` from a URL before it is shown anywhere."""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    host, sep, path = rest.partition("/")
    return f"{scheme}://***@{host.rsplit('@', 1)[-1]}{sep}{path}"


_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "", options: S3Options | None = None):
        import boto3
        import botocore.config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options or S3Options()
        o = self.options
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        extra = {}
        if o.checksum:
            extra = {"request_checksum_calculation": o.checksum, "response_checksum_validation": o.checksum}
        config = botocore.config.Config(
            retries={"max_attempts": o.max_attempts, "mode": "standard"},
            s3={"addressing_style": o.addressing_style} if o.addressing_style else None,
            connect_timeout=o.connect_timeout,
            read_timeout=o.read_timeout,
            **extra,
        )
        try:
            session = boto3.Session(profile_name=o.profile, region_name=o.region)
            self.client = session.client("s3", endpoint_url=o.endpoint_url, config=config)
        except Exception as exc:  # noqa: BLE001 - ProfileNotFound etc.: name the setting, no traceback
            raise MapleZooError(f"zoo store {self.url}: cannot create the S3 client: {type(exc).__name__}") from None

    @classmethod
    def from_url(cls, url: str, options: S3Options | None = None) -> S3Store:
        rest = url[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise MapleZooError(f"zoo store '{url}': missing bucket name (expected s3://bucket/prefix)")
        return cls(bucket, prefix, options)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, op: str, key: str, **kwargs):
        """Run one client call, mapping S3 errors to the store's exceptions and one-line errors."""
        import botocore.exceptions as bex

        try:
            return getattr(self.client, op)(Bucket=self.bucket, Key=self._key(key), **kwargs)
        except bex.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _NOT_FOUND or (op == "head_object" and status == "404"):
                raise NotFound(f"{self.uri(key)}: not found") from None
            if code in _CONFLICT or status in ("412", "409"):
                raise PreconditionFailed(key) from None
            if code == "NoSuchBucket":
                raise MapleZooError(f"zoo store {self.url}: bucket '{self.bucket}' does not exist") from None
            raise MapleZooError(f"zoo store {self.url}: {op} '{key}' failed: {code or status}") from None
        except bex.NoCredentialsError:
            raise MapleZooError(
                f"zoo store {self.url}: no AWS credentials found (set AWS_* env vars, a profile, or a role)"
            ) from None
        except (bex.EndpointConnectionError, bex.ConnectTimeoutError) as exc:
            where = redact_url(self.options.endpoint_url) or "the default AWS endpoint"
            raise MapleZooError(
                f"zoo store {self.url}: cannot reach {where} ({type(exc).__name__})"
            ) from None

    def get(self, key: str) -> tuple[bytes, str]:
        resp = self._call("get_object", key)
        return resp["Body"].read(), resp["ETag"]

    def download(self, key: str, out: BinaryIO, progress: Progress | None = None) -> None:
        import botocore.exceptions as bex

        resp = self._call("get_object", key)
        try:
            for chunk in resp["Body"].iter_chunks(CHUNK):
                out.write(chunk)
                if progress:
                    progress(len(chunk))
        except bex.BotoCoreError as exc:  # stream cut, checksum mismatch, read timeout
            raise MapleZooError(f"{self.uri(key)}: download interrupted ({type(exc).__name__})") from None

    def put(self, key: str, data: bytes) -> str:
        return self._call("put_object", key, Body=data)["ETag"]

    def put_if_absent(self, key: str, data: bytes) -> str:
        return self._call("put_object", key, Body=data, IfNoneMatch="*")["ETag"]

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        try:
            return self._call("put_object", key, Body=data, IfMatch=etag)["ETag"]
        except NotFound:  # S3 answers 404 when the object it should match is gone
            raise PreconditionFailed(key) from None

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        import botocore.exceptions as bex

        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(f"{self.prefix}/") if self.prefix else 0
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except bex.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise MapleZooError(f"zoo store {self.url}: list failed: {code}") from None
        return sorted(keys)
