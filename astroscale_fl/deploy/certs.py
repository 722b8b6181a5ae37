"""A local CA, a SuperLink server certificate and SuperNode key pairs, for testing.

Real deployments bring their own certificates (from the centre's CA) and let each archive
generate its own node key; this module exists so that a laptop or CI run can exercise TLS and
node authentication end to end. Everything is written atomically with private keys 0600.

Layout under ``DIR``::

    ca.crt  ca.key                 local certificate authority (ca.key never leaves DIR)
    server.pem  server.key         SuperLink certificate (SANs: the given hosts) and key
    node-<i>  node-<i>.pub         SuperNode i's private key (OpenSSH, ECDSA P-384) and public key
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from astroscale_fl.atomic import write_bytes

DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")


def _write_private(path: Path, data: bytes) -> None:
    write_bytes(path, data, mode=0o600)  # 0600 from the temporary file's first byte, not after the rename


def _san(hosts: list[str]):
    from cryptography import x509

    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca_and_server(out_dir: str | Path, hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS, days: int = 30) -> dict[str, Path]:
    """Write ca.crt/ca.key and server.pem/server.key (signed by the CA) into ``out_dir``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AstroScale FL test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(list(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8, encryption_algorithm=serialization.NoEncryption())
    paths = {"ca_cert": out / "ca.crt", "ca_key": out / "ca.key", "server_cert": out / "server.pem", "server_key": out / "server.key"}
    write_bytes(paths["ca_cert"], ca_cert.public_bytes(pem))
    _write_private(paths["ca_key"], ca_key.private_bytes(**pkcs8))
    write_bytes(paths["server_cert"], server_cert.public_bytes(pem))
    _write_private(paths["server_key"], server_key.private_bytes(**pkcs8))
    return paths


def make_node_key(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write a SuperNode key pair ``name`` (private, OpenSSH) and ``name.pub``; return both paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    priv_path, pub_path = out / name, out / f"{name}.pub"
    _write_private(priv_path, private)
    write_bytes(pub_path, public + f" astroscale-{name}\n".encode())
    return priv_path, pub_path


def make_all(out_dir: str | Path, num_nodes: int, hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS, days: int = 30) -> dict[str, Path]:
    """CA, server certificate and ``num_nodes`` node key pairs (node-1 .. node-N)."""
    paths = make_ca_and_server(out_dir, hosts, days)
    for i in range(1, num_nodes + 1):
        paths[f"node-{i}"], paths[f"node-{i}.pub"] = make_node_key(out_dir, f"node-{i}")
    return paths
