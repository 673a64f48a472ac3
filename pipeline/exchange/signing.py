"""Ed25519 signatures of exchange records (the `cryptography` package).

A platform signs the canonical form of an ExchangeSignal: its fields other than the
signature, in schema order, as compact JSON (`canonical`). Partners verify it with the
platform's public key from the partner registry. Keys are PEM files: `modstream exchange
keygen` writes a pair; the private key stays with its platform, the public key is given to
partners (`modstream partners add`).
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline.records import Record

SIGNED_FIELDS = (
    "kind",
    "signal_type",
    "hash",
    "category",
    "severity",
    "platform_id",
    "incident_id",
    "about_platform",
    "signed_at",
)


class SignatureError(ValueError):
    """A signature that is missing, malformed or does not verify."""


def exchange_key(record: Record) -> str:
    """The key of an exchange record: signal_type/hash, as on the shared-signals topic."""
    return f"{record['signal_type']}/{record['hash'].lower()}"


def canonical(record: Record) -> bytes:
    return json.dumps([record.get(f) for f in SIGNED_FIELDS], separators=(",", ":"), ensure_ascii=True).encode()


def keygen(private_path: Path, public_path: Path) -> None:
    """Writes a new key pair; the private key file is readable by its owner only."""
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private_path.chmod(0o600)
    public_path.write_bytes(public_pem(key).encode())


def public_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def load_private(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SignatureError(f"cannot load the exchange private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public(pem: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise SignatureError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("not an Ed25519 public key")
    return key


def sign(record: Record, key: Ed25519PrivateKey) -> Record:
    return {**record, "signature": key.sign(canonical(record))}


def verify(record: Record, key: Ed25519PublicKey) -> None:
    signature = record.get("signature") or b""
    if len(signature) != 64:
        raise SignatureError("unsigned" if not signature else f"malformed signature ({len(signature)} bytes)")
    try:
        key.verify(signature, canonical(record))
    except InvalidSignature as exc:
        raise SignatureError("bad signature: it does not verify with the partner's public key") from exc
