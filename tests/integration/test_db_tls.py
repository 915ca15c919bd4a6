"""TLS to PostgreSQL, verified for real: a test CA, a server certificate, a TLS-terminating relay.

The embedded pgserver has no OpenSSL, so the relay plays the server's side of
PostgreSQL's TLS negotiation: it answers the 8-byte SSLRequest with ``S`` (or ``N``
for a server without TLS), completes the handshake with its certificate, then
behaves as a man in the middle would: it asks for the password in clear text
(AuthenticationCleartextPassword, which pg8000 honours) and records every byte the
client sends after the handshake. Only then does it connect to pgserver's Unix
socket and forward the session, so a successful connection really runs SQL.

What it proves: ``verify-full`` connects to a certificate from a trusted CA with
the right name (from ``sslrootcert`` and from the layer's CA bundle); a wrong host
name, a certificate from an untrusted CA, and a server refusing TLS under
``require`` all fail with a clear error *before* the client sends anything, the
password included.
"""
import datetime
import select
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from totes import db, errors

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
PASSWORD = "tls-test-password-7f3c"  # nosec B105 - a marker to look for on the wire


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Authority:
    """A throwaway certificate authority that can issue server certificates."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, common_name: str) -> "Authority":
        """Generate a self-signed CA certificate valid for a day."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder().subject_name(_name(common_name))
            .issuer_name(_name(common_name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
        return cls(key, certificate)

    def pem(self) -> bytes:
        """The CA certificate as PEM, what a client trusts."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, directory: Path, dns_name: str) -> ssl.SSLContext:
        """A server's TLS context with a certificate for ``dns_name`` issued by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder().subject_name(_name(dns_name))
            .issuer_name(self.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256()))
        cert_path, key_path = directory / f"{dns_name}.crt", directory / f"{dns_name}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


@dataclass
class Relay:
    """A PostgreSQL server front that terminates TLS and asks for a clear-text password.

    ``received`` holds every byte a client sent after the SSLRequest (decrypted);
    ``errors`` how the session ended early, if it did; ``ssl_requests`` how many
    SSLRequests arrived.
    """

    backend_socket: str
    context: ssl.SSLContext | None
    received: bytearray = field(default_factory=bytearray)
    errors: list[str] = field(default_factory=list)
    ssl_requests: int = 0

    def start(self) -> int:
        """Listen on a free port of 127.0.0.1, serve in the background; return the port."""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self.listener.getsockname()[1]

    def finish(self) -> "Relay":
        """Wait until the client's session is over, so what it received is final."""
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "relay session did not end"
        self.listener.close()
        return self

    def _serve(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        with client:
            client.settimeout(10)
            try:
                self._session(client)
            except (OSError, ConnectionError) as error:
                self.errors.append(repr(error))  # the client gave up, as several tests expect

    def _session(self, client: socket.socket) -> None:
        first = _read_exactly(client, 8)
        assert first == SSL_REQUEST, first
        self.ssl_requests += 1
        if self.context is None:
            client.sendall(b"N")  # a server without TLS: carry on in clear text, if allowed
            stream = client
        else:
            client.sendall(b"S")
            stream = self.context.wrap_socket(client, server_side=True)
        length = struct.unpack("!i", self._take(stream, 4))[0]
        startup = self._take(stream, length - 4)
        stream.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        kind = self._take(stream, 1)
        password_length = struct.unpack("!i", self._take(stream, 4))[0]
        self._take(stream, password_length - 4)
        assert kind == b"p", kind
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as backend:
            backend.connect(self.backend_socket)
            backend.sendall(struct.pack("!i", length) + startup)
            self._pipe(stream, backend)

    def _take(self, stream: socket.socket, size: int) -> bytes:
        data = _read_exactly(stream, size)
        self.received += data
        return data

    def _pipe(self, stream: socket.socket, backend: socket.socket) -> None:
        """Forward both ways until either side closes.

        One thread for both directions: an SSL socket is not safe to read and write
        from two threads at once.
        """
        while True:
            pending = isinstance(stream, ssl.SSLSocket) and stream.pending()
            readable = [stream] if pending else select.select([stream, backend], [], [], 10)[0]
            if not readable:
                return
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                if source is stream:
                    self.received += data
                    backend.sendall(data)
                else:
                    stream.sendall(data)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two CAs as files, and server contexts with certificates from the trusted one.

    The certificates are for ``localhost`` and for a name the tests never connect to.
    """
    directory = tmp_path_factory.mktemp("pki")
    trusted, stranger = Authority.create("totes test CA"), Authority.create("someone else's CA")
    (directory / "ca.pem").write_bytes(trusted.pem())
    (directory / "other-ca.pem").write_bytes(stranger.pem())
    return {"ca": str(directory / "ca.pem"), "other_ca": str(directory / "other-ca.pem"),
            "localhost": trusted.issue(directory, "localhost"),
            "elsewhere": trusted.issue(directory, "db.elsewhere.example")}


@pytest.fixture
def relay(postgres, pki):
    """Start a TLS relay in front of the session's embedded PostgreSQL."""
    backend = str(Path(postgres.socket_dir) / f".s.PGSQL.{postgres.port}")

    def start(certificate: str | None = "localhost") -> tuple[Relay, int]:
        server = Relay(backend, pki[certificate] if certificate else None)
        return server, server.start()
    return start


def tcp_secret(postgres, port: int, **extra) -> dict:
    """A secret for the relay: the embedded server's database and user, over TCP."""
    return {**postgres.secret("postgres"), "host": "localhost", "port": port,
            "password": PASSWORD, **extra}


def test_verify_full_is_the_default_and_connects_to_a_trusted_certificate(postgres, relay, pki):
    server, port = relay()
    connection = db.connect_with(tcp_secret(postgres, port, sslrootcert=pki["ca"]), "test")
    try:
        assert connection.run("SELECT 1") == [[1]]
    finally:
        connection.close()
    # The relay does see what a server is sent, so its silence in the failing cases counts.
    assert PASSWORD.encode() in server.finish().received


def test_the_ca_bundle_shipped_in_the_layer_is_trusted(postgres, relay, pki, monkeypatch):
    monkeypatch.setattr(db, "LAYER_CA_BUNDLE", Path(pki["ca"]))
    server, port = relay()
    connection = db.connect_with(tcp_secret(postgres, port), "test")
    try:
        assert connection.run("SELECT current_user") == [[postgres.user]]
    finally:
        connection.close()


def test_without_a_bundle_verify_full_uses_the_system_store_which_lacks_the_test_ca(
        postgres, relay, tmp_path, monkeypatch):
    monkeypatch.setattr(db, "LAYER_CA_BUNDLE", tmp_path / "absent.pem")
    server, port = relay()
    with pytest.raises(db.DatabaseUnavailableError,
                       match="certificate rejected .*system trust store .*make deploy-build, "
                             "then deploy") as caught:
        db.connect_with(tcp_secret(postgres, port), "test")
    assert server.finish().received == b""
    # A build without the bundle fails every run the same way: a person must act.
    assert errors.kind_of(caught.value) == errors.INPUT


@pytest.mark.parametrize("certificate, host, mismatch", [
    ("elsewhere", "localhost", "Hostname mismatch, certificate is not valid for 'localhost'"),
    ("localhost", "127.0.0.1", "IP address mismatch, certificate is not valid for '127.0.0.1'"),
])
def test_a_wrong_host_name_fails_before_the_password_is_sent(postgres, relay, pki,
                                                             certificate, host, mismatch):
    server, port = relay(certificate)
    secret = tcp_secret(postgres, port, host=host, sslrootcert=pki["ca"])
    with pytest.raises(db.DatabaseUnavailableError) as caught:
        db.connect_with(secret, "secret totesys")
    message = str(caught.value)
    assert f"certificate rejected ({mismatch}" in message
    assert "the password was not sent" in message and PASSWORD not in message
    assert server.finish().ssl_requests == 1 and server.received == b""
    assert errors.kind_of(caught.value) == errors.INPUT


@pytest.mark.parametrize("host, certified", [
    ("db.private.internal.", "db.private.internal"),   # fully qualified: its final dot
    ("my_db.private.internal", "my_db.private.internal"),   # private DNS's underscore
])
def test_verify_full_connects_to_a_host_named_as_private_dns_names_it(
        postgres, relay, pki, tmp_path, monkeypatch, host, certified):
    authority = Authority.create("private CA")
    (tmp_path / "ca.pem").write_bytes(authority.pem())
    server = Relay(str(Path(postgres.socket_dir) / f".s.PGSQL.{postgres.port}"),
                   authority.issue(tmp_path, certified))
    port = server.start()
    resolve = socket.getaddrinfo   # the private zone: the name leads to this machine

    def private_dns(name, *args, **kwargs):
        return resolve("127.0.0.1" if name == host else name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", private_dns)
    connection = db.connect_with(
        tcp_secret(postgres, port, host=host, sslrootcert=str(tmp_path / "ca.pem")), "test")
    try:
        assert connection.run("SELECT 1") == [[1]]
    finally:
        connection.close()
    assert PASSWORD.encode() in server.finish().received


def test_verify_ca_accepts_the_right_ca_under_another_host_name(postgres, relay, pki):
    server, port = relay()
    secret = tcp_secret(postgres, port, host="127.0.0.1", sslrootcert=pki["ca"],
                        sslmode="verify-ca")
    connection = db.connect_with(secret, "test")
    connection.close()


def test_an_untrusted_certificate_fails_clearly_before_the_password_is_sent(postgres, relay, pki):
    server, port = relay()
    secret = tcp_secret(postgres, port, sslrootcert=pki["other_ca"])
    with pytest.raises(db.DatabaseUnavailableError) as caught:
        db.connect_with(secret, "secret totesys")
    message = str(caught.value)
    assert message.startswith("cannot connect to database postgres at localhost:")
    assert "certificate rejected (unable to get local issuer certificate" in message
    assert f"sslrootcert {pki['other_ca']}" in message and "password was not sent" in message
    assert server.finish().ssl_requests == 1 and server.received == b""


def test_require_refuses_a_server_without_tls_instead_of_sending_the_password(postgres, relay):
    server, port = relay(certificate=None)
    with pytest.raises(db.DatabaseUnavailableError,
                       match="does not accept TLS \\(sslmode require\\); the password was not"
                       ) as caught:
        db.connect_with(tcp_secret(postgres, port, sslmode="require"), "test")
    assert server.finish().ssl_requests == 1 and server.received == b""
    assert errors.kind_of(caught.value) == errors.INPUT


def test_require_encrypts_without_checking_the_certificate(postgres, relay, pki):
    server, port = relay()
    secret = tcp_secret(postgres, port, host="127.0.0.1", sslmode="require",
                        sslrootcert=pki["other_ca"])
    connection = db.connect_with(secret, "test")
    connection.close()
    assert PASSWORD.encode() in server.finish().received


def test_a_missing_root_certificate_file_is_a_secret_error(postgres, tmp_path):
    secret = tcp_secret(postgres, 5432, sslrootcert=str(tmp_path / "nope.pem"))
    with pytest.raises(db.SecretFormatError, match="sslrootcert .*nope.pem cannot be read"):
        db.connect_with(secret, "test")
