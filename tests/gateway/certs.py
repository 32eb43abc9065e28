"""Throw-away test PKI made with the openssl CLI (the `cryptography` package is not a dependency):
a CA, a broker certificate for 127.0.0.1/localhost, a client certificate, and a second,
unrelated CA with its own client certificate for the "wrong CA" cases. EC P-256 keys: fast.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TestPki", "make_pki", "openssl_available"]

_CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class TestPki:
    """PEM files of one test PKI; `other_*` belong to a CA the broker does not trust."""

    __test__ = False  # not a pytest test class despite the name

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    other_client_cert: Path
    other_client_key: Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"openssl {' '.join(map(str, args[:2]))} failed: {result.stderr.strip()}"
        )


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", *_CURVE, "-keyout", key, "-out", cert, "-days", "2",
        "-subj", f"/CN=citynerve test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _make_leaf(
    directory: Path, name: str, ca: tuple[Path, Path], *, extensions: str, subject: str
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}{ext}" for ext in (".crt", ".key", ".csr"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl("req", *_CURVE, "-keyout", key, "-out", csr, "-subj", subject, cwd=directory)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext_file,
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> TestPki:
    """Write a fresh test PKI into `directory` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "ca")
    other_ca = _make_ca(directory, "other-ca")
    server = _make_leaf(
        directory, "server", ca, subject="/CN=localhost",
        extensions=(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        ),
    )  # fmt: skip
    client_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    client = _make_leaf(directory, "client", ca, subject="/CN=gateway-test", extensions=client_ext)
    other_client = _make_leaf(
        directory, "other-client", other_ca, subject="/CN=intruder", extensions=client_ext
    )
    return TestPki(
        ca_cert=ca[0],
        ca_key=ca[1],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        other_ca_cert=other_ca[0],
        other_client_cert=other_client[0],
        other_client_key=other_client[1],
    )
