"""Test certificates made with ``openssl`` (a CA, server and client certificates), never downloaded."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TestCA:
    dir: Path
    cert: Path
    key: Path

    def issue(self, name: str, *, cn: str, sans: tuple[str, ...] = (), server: bool = True, client: bool = True) -> Pair:
        """A certificate signed by this CA with subject CN ``cn`` and SANs (``DNS:x``, ``IP:1.2.3.4``, ``URI:...``)."""
        d = self.dir
        key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
        usages = ",".join(u for u, on in (("serverAuth", server), ("clientAuth", client)) if on)
        lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment", f"extendedKeyUsage={usages}"]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={cn}", cwd=d)
        _run("x509", "-req", "-in", csr.name, "-CA", self.cert.name, "-CAkey", self.key.name, "-CAcreateserial",
             "-out", crt.name, "-days", "2", "-extfile", ext.name, cwd=d)
        return Pair(cert=crt, key=key)


def make_ca(directory: Path, name: str = "ca") -> TestCA:
    directory.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=modelmux test {name}", cwd=directory)
    return TestCA(dir=directory, cert=directory / f"{name}.crt", key=directory / f"{name}.key")
