"""A cluster's own certificate authority and its services' server certificates.

``hai fs3 up --tls`` keeps them in the cluster folder's ``tls/`` (0700): ``ca.pem`` (what
clients verify servers against), ``ca.key``, and per service ``NAME.pem`` / ``NAME.key``,
signed by the CA and naming the hosts it is reached at (IP or DNS subject alternative
names). Keys are ECDSA P-256, which gRPC's BoringSSL speaks; every private key is 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fs3.errors import ConfigError

CA_FILE = "ca.pem"
_CA_KEY = "ca.key"
_CA_DAYS = 3650
# Re-issued at every `up`, so a year is never reached by a running local cluster.
_SERVER_DAYS = 365
ALWAYS = ("127.0.0.1", "localhost")
"""Names every server certificate carries, so loopback clients verify it."""


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older, looser file keeps its mode through O_TRUNC
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(subject: str, issuer: x509.Name, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks a little apart
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def ensure_ca(folder: Path) -> Path:
    """The CA in ``folder`` (created 0700 if needed), made when it has none; returns its
    certificate's path. An existing CA is kept, so clients holding its certificate still
    verify the servers after a restart."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    cert_path = folder / CA_FILE
    if cert_path.exists() and (folder / _CA_KEY).exists():
        return cert_path
    # Its own name: verifiers look a certificate's issuer up by name, so another cluster's
    # certificate then fails as "unknown issuer" rather than "bad signature".
    name = f"fs3 local CA {secrets.token_hex(4)}"
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(name, subject, _CA_DAYS)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(folder / _CA_KEY, _key_pem(key))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue(folder: Path, name: str, hosts: Iterable[str]) -> tuple[Path, Path]:
    """Signs a new server certificate ``folder/NAME.pem`` (key ``NAME.key``, 0600) with the
    CA of ``folder`` for ``hosts`` and :data:`ALWAYS`; returns both paths.

    Raises ConfigError when ``folder`` has no readable CA (see :func:`ensure_ca`).
    """
    try:
        ca_key = serialization.load_pem_private_key((folder / _CA_KEY).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((folder / CA_FILE).read_bytes())
    except (OSError, ValueError) as err:
        raise ConfigError(f"no usable fs3 CA in {folder}: {err}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"the fs3 CA key in {folder} is not an ECDSA key")
    names = list(dict.fromkeys([*hosts, *ALWAYS]))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, ca_cert.subject, _SERVER_DAYS)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    _write(key_path, _key_pem(key))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
