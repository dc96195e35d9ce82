"""A test PKI for the TLS tests: a CA, server certificates for 127.0.0.1 and localhost,
client certificates (valid, expired, from an unknown CA), written as PEM files.

Made with `cryptography` (OpenSSL underneath); RSA 2048 keys, as dcmtk's default BCP 195
profile and every browser take them."""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert, key=None):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@dataclass
class Authority:
    name: str
    key: object
    cert: object

    @staticmethod
    def make(name: str) -> "Authority":
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(_name(name)).issuer_name(_name(name))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return Authority(name, key, cert)

    def issue(self, cn: str, server: bool, days_valid=(-1, 30)) -> tuple:
        """A certificate and its key: for a server (127.0.0.1, ::1, localhost) or a client."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(cn)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now + datetime.timedelta(days=days_valid[0]))
                   .not_valid_after(now + datetime.timedelta(days=days_valid[1]))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


class Pki:
    """PEM files in `root`: ca.pem; server.pem/.key and server2.pem/.key (two certificates
    for the same names, for rotation); client.pem/.key; expired-client.pem/.key;
    rogue-client.pem/.key (issued by a CA nobody trusts) and rogue-ca.pem."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = Authority.make("pacs-lite test CA")
        rogue = Authority.make("unknown CA")
        _write(root / "ca.pem", self.ca.cert)
        _write(root / "rogue-ca.pem", rogue.cert)
        for name, issuer, server, days in [
            ("server", self.ca, True, (-1, 30)),
            ("server2", self.ca, True, (-1, 60)),
            ("client", self.ca, False, (-1, 30)),
            ("expired-client", self.ca, False, (-30, -2)),
            ("rogue-client", rogue, False, (-1, 30)),
        ]:
            cert, key = issuer.issue(f"pacs-lite test {name}", server, days)
            _write(root / f"{name}.pem", cert, key)

    def pem(self, name: str) -> str:
        return str(self.root / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.root / f"{name}.key")

    def pair(self, name: str) -> tuple[str, str]:
        """(certificate, key) paths, as `requests`' `cert=` takes them."""
        return self.pem(name), self.key(name)

    def spki_sha256(self, name: str) -> str:
        """Base64 SHA-256 of a certificate's SubjectPublicKeyInfo (Chromium's
        --ignore-certificate-errors-spki-list takes these)."""
        import base64
        import hashlib
        cert = x509.load_pem_x509_certificate((self.root / f"{name}.pem").read_bytes())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def serial(self, name: str) -> int:
        return x509.load_pem_x509_certificate((self.root / f"{name}.pem").read_bytes()).serial_number


def peer_serial(host: str, port: int, ca: str) -> int:
    """The serial number of the certificate a TLS server presents now (a new handshake)."""
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number
