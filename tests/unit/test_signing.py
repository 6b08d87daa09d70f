from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vary.state.signing import ExpiredError, SignatureError, UrlSigner, load_or_create_secret


def test_sign_and_verify() -> None:
    signer = UrlSigner(b"k" * 32)
    sig = signer.signature("abc", 1000)
    signer.verify("abc", 1000, sig, now=999)
    with pytest.raises(ExpiredError):
        signer.verify("abc", 1000, sig, now=1000)
    for image_id, expires, bad in (
        ("abd", 1000, sig),
        ("abc", 1001, sig),
        ("abc", 1000, sig.upper()),
        ("abc", 1000, ""),
    ):
        with pytest.raises(SignatureError):
            signer.verify(image_id, expires, bad, now=0)
    with pytest.raises(SignatureError):
        UrlSigner(b"j" * 32).verify("abc", 1000, sig, now=0)


def test_signature_is_checked_before_expiry() -> None:
    # A forged URL must not learn whether its expiry passed.
    with pytest.raises(SignatureError):
        UrlSigner(b"k" * 32).verify("abc", 1, "0" * 64, now=10)


def test_secret_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["secret"]


def test_short_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"short")
    with pytest.raises(ValueError, match="shorter than 16 bytes"):
        load_or_create_secret(tmp_path / "secret")
