"""`vary serve` with its images in a real S3 bucket (SeaweedFS), through the openai SDK and plain HTTP.

The images are objects under the prefix, read back through vary; presigned URLs fetch
the image from the store without vary; a store that goes away is a 503 with Retry-After, never a
500 or a hang; a store that cannot be used stops the start with one line. The file:// and the
default stores behave as before.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from openai import OpenAI

from tests.conftest import decode_png, png_bytes
from vary.testing import ServerProcess

if TYPE_CHECKING:
    from tests.cluster.seaweedfs import S3Endpoint

WAIT_S = 60.0


def variations(server: ServerProcess, n: int = 2) -> list[str]:
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="no-auth", max_retries=0, timeout=WAIT_S)
    result = client.images.create_variation(image=png_bytes(64), n=n, size="256x256", response_format="url")
    urls = [image.url for image in result.data]
    assert all(urls)
    return [url for url in urls if url]


def image_id(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1].removesuffix(".png")


def bucket_keys(endpoint: S3Endpoint, bucket: str) -> set[str]:
    pages = endpoint.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {entry["Key"] for page in pages for entry in page.get("Contents", [])}


def replica(tmp_path: Path, name: str, env: dict[str, str], *args: str) -> ServerProcess:
    # Readiness probed at every call: the tests expect /readyz to follow the store's outage at once.
    return ServerProcess(
        tmp_path / name, extra_args=["--no-auth", *args], env={"VARY_READYZ_INTERVAL_SECONDS": "0", **env}
    )


@pytest.mark.cluster
def test_the_images_are_objects_in_the_bucket_and_a_bucket_gone_is_a_503(
    seaweedfs: S3Endpoint, s3_bucket: str, tmp_path: Path
) -> None:
    # Two replicas serving each other's URLs from one bucket: tests/cluster/test_two_replicas.py.
    env = {**seaweedfs.env(), "VARY_SIGNING_SECRET": secrets.token_urlsafe(32)}
    storage = ("--storage-url", f"s3://{s3_bucket}/vary/images")
    with replica(tmp_path, "a", env, *storage) as first:
        second = first
        urls = variations(first)
        assert {f"vary/images/{image_id(url)}.png" for url in urls} == bucket_keys(seaweedfs, s3_bucket)
        assert not (tmp_path / "a" / "images").exists(), "nothing is written to the data dir"
        for url in urls:
            assert url.startswith(f"{first.base_url}/v1/files/")
            stored = seaweedfs.client().get_object(Bucket=s3_bucket, Key=f"vary/images/{image_id(url)}.png")
            from_first = httpx.get(url, timeout=WAIT_S)
            from_second = httpx.get(url.replace(first.base_url, second.base_url), timeout=WAIT_S)
            assert from_first.status_code == from_second.status_code == 200
            assert from_first.content == from_second.content == stored["Body"].read()
            assert from_second.headers["content-type"] == "image/png"
            assert decode_png(from_second.content).size == (256, 256)
        tampered = urls[0].replace(first.base_url, second.base_url)[:-4] + "0000"
        assert httpx.get(tampered, timeout=WAIT_S).json()["error"]["code"] == "invalid_signature"

        ready = httpx.get(f"{second.base_url}/readyz", timeout=WAIT_S)
        assert ready.status_code == 200 and ready.json()["store"] == "ok"
        assert len(bucket_keys(seaweedfs, s3_bucket)) == len(urls), "the readiness probe is deleted"

        # An image swept (or never made): the same 404 as ever.
        seaweedfs.client().delete_object(Bucket=s3_bucket, Key=f"vary/images/{image_id(urls[0])}.png")
        gone = httpx.get(urls[0].replace(first.base_url, second.base_url), timeout=WAIT_S)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "file_not_found"

        # The bucket goes away under the replicas: 503 + Retry-After in OpenAI's error shape, never a URL.
        client = seaweedfs.client()
        client.delete_objects(
            Bucket=s3_bucket, Delete={"Objects": [{"Key": key} for key in bucket_keys(seaweedfs, s3_bucket)]}
        )
        client.delete_bucket(Bucket=s3_bucket)
        try:
            failed = httpx.post(
                f"{first.base_url}/v1/images/variations",
                files={"image": ("a.png", png_bytes())},
                data={"size": "256x256"},
                timeout=WAIT_S,
            )
            assert failed.status_code == 503 and failed.headers["retry-after"].isdigit()
            assert set(failed.json()["error"]) == {"message", "type", "param", "code"}
            assert failed.json()["error"]["code"] == "store_unavailable" and "url" not in failed.text
            read = httpx.get(urls[1], timeout=WAIT_S)
            assert read.status_code == 503 and read.json()["error"]["code"] == "store_unavailable"
            not_ready = httpx.get(f"{first.base_url}/readyz", timeout=WAIT_S)
            assert not_ready.status_code == 503 and not_ready.json()["store"] == "failing: StoreUnavailable"
            b64 = httpx.post(
                f"{first.base_url}/v1/images/variations",
                files={"image": ("a.png", png_bytes())},
                data={"size": "256x256", "response_format": "b64_json"},
                timeout=WAIT_S,
            )
            assert b64.status_code == 200, "what needs no store still works"
        finally:
            client.create_bucket(Bucket=s3_bucket)
        assert len(variations(second, n=1)) == 1, "the store back: URLs again"


@pytest.mark.cluster
def test_presigned_urls_come_from_the_store_without_vary(seaweedfs: S3Endpoint, s3_bucket: str, tmp_path: Path) -> None:
    env = {**seaweedfs.env(), "VARY_STORAGE_PRESIGN": "1", "VARY_STORAGE_URL": f"s3://{s3_bucket}"}
    with replica(tmp_path, "presign", env) as server:
        urls = variations(server)
        server.stop()  # vary is gone: the URLs are the store's own
        for url in urls:
            assert url.startswith(f"{seaweedfs.url}/{s3_bucket}/{image_id(url)}.png?")
            query = parse_qs(urlsplit(url).query)
            assert 3500 <= int(query["X-Amz-Expires"][0]) <= 3600  # vary's own URL lifetime
            response = httpx.get(url, timeout=WAIT_S)
            assert response.status_code == 200
            assert decode_png(response.content).size == (256, 256)
        assert {f"{image_id(url)}.png" for url in urls} == bucket_keys(seaweedfs, s3_bucket)


def test_an_explicit_file_url_stores_the_images_there(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    with replica(tmp_path, "files", {}, "--storage-url", f"file://{elsewhere}") as server:
        urls = variations(server)
        assert sorted(p.name for p in elsewhere.iterdir()) == sorted(f"{image_id(url)}.png" for url in urls)
        assert not (tmp_path / "files" / "images").exists()
        assert all(httpx.get(url, timeout=WAIT_S).status_code == 200 for url in urls)


def test_the_default_store_is_the_data_dirs_images(
    server: ServerProcess, server_data_dir: Path, http: httpx.Client
) -> None:
    answer = http.post("/v1/images/variations", files={"image": ("a.png", png_bytes())}, data={"size": "256x256"})
    url = answer.json()["data"][0]["url"]
    assert (server_data_dir / "images" / f"{image_id(url)}.png").read_bytes() == httpx.get(url, timeout=WAIT_S).content


def start_refused(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    """The one line `vary serve` exits with, before any model loads."""
    done = subprocess.run(
        [sys.executable, "-m", "vary", "serve", "--model", "tiny-random", "--data-dir", str(tmp_path), *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 1, done.stderr
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.cluster
def test_a_store_that_cannot_be_used_stops_the_start_in_one_line(seaweedfs: S3Endpoint, tmp_path: Path) -> None:
    missing = start_refused(tmp_path, seaweedfs.env(), "--storage-url", "s3://vary-no-such-bucket/images")
    assert missing.startswith("vary: the bucket s3://vary-no-such-bucket at http://127.0.0.1:")
    assert missing.endswith("does not exist; create it first (vary never creates buckets)")
    assert "vary-no-such-bucket" not in {b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]}


def test_a_storage_url_of_another_kind_stops_the_start_in_one_line(tmp_path: Path) -> None:
    other = start_refused(tmp_path, {}, "--storage-url", "ftp://files.example/images")
    assert other == (
        "vary: the storage URL 'ftp://files.example/images' is not accepted; "
        "accepted forms: file:///absolute/dir or s3://BUCKET[/PREFIX]"
    )
