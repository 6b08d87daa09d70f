"""S3ImageStore: generated PNGs as objects in an S3 bucket (AWS or any S3-compatible store).

Configured the standard AWS way, read by boto3 itself: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
a profile, SSO, a web identity or an instance role), AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL_S3 /
AWS_ENDPOINT_URL for a store that is not AWS. Keys are `PREFIX<id>.png`.

Why boto3, weighed against the others:
- boto3 is the reference implementation of AWS's configuration and credential chain (every env
  variable, config-file profile, SSO, IRSA on Kubernetes, instance metadata), it presigns URLs
  itself, and it has bounded timeouts and the "standard" retry mode in its Config. It is already
  vary's dependency for the Bedrock engine, so the cluster extra adds nothing new.
- Its cost: its calls block. vary already runs file writes in the thread pool, and a request
  makes at most ten small (< 5 MB) puts, so the same pool serves; the client's connection pool is
  sized to that thread pool so threads never wait for a connection.
- aioboto3 / aiobotocore are async, but pin botocore to narrow ranges, which conflicts with the
  boto3 that Bedrock uses, and lag its releases. The async gain is small for a handful of calls
  per request.
- obstore (Rust's object_store) is fast and async, but it reads only part of the AWS chain (no
  config-file profiles or SSO), so "configured the standard AWS way" would hold only partly; it is
  also a younger, native dependency. It would fit if bulk throughput mattered; here it does not.

Every failure to reach the store (connection refused, timeouts after the bounded retries, 5xx,
denied access, a bucket deleted under us) becomes vary.errors.StoreUnavailable; the reason goes to
the log, never to the client.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from vary.errors import StoreUnavailable
from vary.state.image_store import STALE_TEMP_SECONDS, StorageSetupError, is_valid_id, new_id

log = logging.getLogger("vary.storage")

# Starlette runs blocking calls on anyio's default thread limiter: at most 40 at once. One
# connection each, so no store call ever waits for a free connection.
POOL_CONNECTIONS = 40
# SigV4 presigned URLs are valid for at most seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
_PROBE_PREFIX = ".ready-"
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_MISSING = {"NoSuchKey", "404", "NotFound"}
# Far above any PNG vary writes (a 1024x1024 RGB image is about 3 MB at most).
MAX_READ_BYTES = 64 * 1024 * 1024


class S3ImageStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
        max_attempts: int = 3,
        pool_connections: int = POOL_CONNECTIONS,
        max_read_bytes: int = MAX_READ_BYTES,
    ) -> None:
        """`prefix` is "" or ends in "/". Worst case per call: max_attempts x the timeouts, plus backoff."""
        self.bucket = bucket
        self.prefix = prefix
        self.max_read_bytes = max_read_bytes
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=pool_connections,
            signature_version="s3v4",  # presigned URLs too (SigV2 is deprecated)
        )
        # Its own session: the default one is shared process-wide, and sessions are not thread-safe.
        self._client: Any = boto3.session.Session().client("s3", config=config)

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    @staticmethod
    def is_valid_id(image_id: str) -> bool:
        return is_valid_id(image_id)

    def key_for(self, image_id: str) -> str:
        if not is_valid_id(image_id):
            raise KeyError(image_id)
        return f"{self.prefix}{image_id}.png"

    def check_bucket(self) -> None:
        """At start: the bucket exists and these credentials reach it. Raises StorageSetupError, one line."""
        where = f"s3://{self.bucket} at {self.endpoint}"
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise StorageSetupError(
                f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile"
            ) from None
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageSetupError(
                    f"the bucket {where} does not exist; create it first (vary never creates buckets)"
                ) from None
            if status == 403 or code in ("403", "AccessDenied", "Forbidden"):
                raise StorageSetupError(
                    f"access to {where} is denied: check the AWS credentials and the bucket's policy"
                ) from None
            raise StorageSetupError(f"{where} answered {status or code}: {exc}") from None
        except BotoCoreError as exc:
            raise StorageSetupError(f"the S3 endpoint for {where} cannot be reached: {exc}") from None

    def put(self, data: bytes) -> str:
        image_id = new_id()
        self._call("put", self._client.put_object, Key=self.key_for(image_id), Body=data, ContentType="image/png")
        return image_id

    def read(self, image_id: str) -> bytes | None:
        if not is_valid_id(image_id):
            return None
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self.key_for(image_id))
            if answer.get("ContentLength", 0) > self.max_read_bytes:
                # Not one of ours (another writer in the bucket): never read into memory.
                answer["Body"].close()
                log.warning(
                    "object %s is %s bytes, larger than any image of ours: not read", image_id, answer["ContentLength"]
                )
                return None
            return bytes(answer["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise self._unavailable("read", exc) from None
        except BotoCoreError as exc:
            raise self._unavailable("read", exc) from None

    def delete(self, image_id: str) -> None:
        self._call("delete", self._client.delete_object, Key=self.key_for(image_id))

    def check_writable(self) -> None:
        """A small probe object put and deleted under the prefix; raises StoreUnavailable."""
        key = f"{self.prefix}{_PROBE_PREFIX}{secrets.token_hex(4)}"
        self._call("readiness probe", self._client.put_object, Key=key, Body=b"ok")
        self._call("readiness probe", self._client.delete_object, Key=key)

    def presigned_url(self, image_id: str, *, expires_in: int) -> str:
        """The store's own GET URL for the image; computed locally, no call to the store."""
        params = {"Bucket": self.bucket, "Key": self.key_for(image_id)}
        return str(self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in))

    def sweep(self, *, ttl_seconds: float, now: float | None = None) -> int:
        """Deletes our images older than `ttl_seconds` by LastModified, and stale readiness probes.

        Only the prefix's own level is listed (Delimiter "/"), and only names vary writes are touched.
        LastModified is the store's clock, `now` ours: they must agree to well within the URL lifetime
        (AWS itself refuses requests signed more than 15 minutes off).
        """
        now = time.time() if now is None else now
        expired = list(self._keys_older_than(now, ttl_seconds))
        removed = 0
        for start in range(0, len(expired), _DELETE_BATCH):
            batch = [{"Key": key} for key in expired[start : start + _DELETE_BATCH]]
            answer = self._call("sweep", self._client.delete_objects, Delete={"Objects": batch, "Quiet": True})
            errors = answer.get("Errors", [])
            for error in errors[:3]:
                log.warning("sweeping %s failed: %s", error.get("Key"), error.get("Code"))
            removed += len(batch) - len(errors)
        return removed

    def _keys_older_than(self, now: float, ttl_seconds: float) -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
        )
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    name = entry["Key"][len(self.prefix) :]
                    age = now - entry["LastModified"].timestamp()
                    ours = name.endswith(".png") and is_valid_id(name[: -len(".png")])
                    if (ours and age > ttl_seconds) or (name.startswith(_PROBE_PREFIX) and age > STALE_TEMP_SECONDS):
                        yield entry["Key"]
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable("sweep listing", exc) from None

    def _call(self, action: str, method: Any, **params: Any) -> Any:
        try:
            return method(Bucket=self.bucket, **params)
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(action, exc) from None

    def _unavailable(self, action: str, exc: Exception) -> StoreUnavailable:
        log.warning("image store s3://%s (%s): %s failed: %s", self.bucket, self.endpoint, action, exc)
        return StoreUnavailable()
