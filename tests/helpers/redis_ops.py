"""Real parts for Redis in production: certificates, Sentinels, a proxy that goes silent."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import threading
from pathlib import Path

from tests.helpers.processes import (
    RedisServer,
    die_with_parent,
    free_port,
    need_binary,
    wait_for_port,
)


def make_ca(directory: Path, name: str) -> tuple[Path, object, object]:
    """A self-signed CA: (its PEM file, its key, its certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(directory: Path, ca_key: object, ca_cert: object) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost signed by the CA: (cert file, key file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def tls_redis(directory: Path) -> tuple[RedisServer, Path]:
    """A redis-server speaking only TLS, with a certificate of a CA made here: (server, CA file)."""
    ca_file, ca_key, ca_cert = make_ca(directory, "test-ca")
    cert, key = make_server_cert(directory, ca_key, ca_cert)
    port = free_port()
    server = RedisServer(
        directory, port=port,
        args=["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
              "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca_file),
              "--tls-auth-clients", "no"],
        cli_args=["--tls", "--cacert", str(ca_file)],
    )
    return server, ca_file


class Sentinel:
    """A redis-sentinel on a free port watching ``mymaster``, with fast failover settings."""

    def __init__(self, directory: Path, master_port: int) -> None:
        self.port = free_port()
        self.config = directory / f"sentinel-{self.port}.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 2\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 3000\n"
            "sentinel parallel-syncs mymaster 2\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Sentinel:
        binary = _sentinel_command()
        # The config file comes first: redis-server reads it, then the options.
        self.proc = subprocess.Popen([binary[0], str(self.config), *binary[1:]], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        wait_for_port(self.port, self.proc)
        return self

    def command(self, *args: str) -> str:
        cli = need_binary("redis-cli")
        return subprocess.run([cli, "-p", str(self.port), *args], check=True,
                              capture_output=True, text=True).stdout

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _sentinel_command() -> list[str]:
    """``redis-sentinel``, or ``redis-server <conf> --sentinel`` (the same binary) without it."""
    if shutil.which("redis-sentinel"):
        return ["redis-sentinel"]
    return [need_binary("redis-server"), "--sentinel"]


class SilentProxy:
    """A TCP proxy to ``upstream`` that can stop forwarding without closing anything.

    That is what a dropped NAT entry or a paused VM looks like from the
    client: the socket stays open and nothing ever comes back.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.forwarding.wait()
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.forwarding.set()
        self._listener.close()
        for sock in self._sockets:
            sock.close()
