"""TLS for ``rediss://``: the CA bundle trusted, and each connection's options.

Every Redis connection verifies the server's certificate and that it names
the host connected to (a DNS name, or an IP address in its SAN, which is
what Sentinel hands out). ``REDIS_CA_FILE`` replaces the system's CAs with a
private bundle, the usual setup of a self-hosted Redis.
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL.crypto import Error as OpenSSLError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

# What trustRootFromCertificates makes: an IOpenSSLTrustRoot, an interface
# Twisted keeps in a private module.
TrustRoot = Any

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def load_trust_root(path: str) -> TrustRoot:
    """The certificates of the PEM bundle at ``path``; ValueError saying what is wrong."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read it: {e.strerror}") from None
    try:
        certificates = [Certificate.loadPEM(block) for block in _PEM.findall(data)]
    except OpenSSLError:
        raise ValueError("it holds a certificate that is not valid PEM") from None
    if not certificates:
        raise ValueError("it holds no PEM certificate")
    return trustRootFromCertificates(certificates)


def client_tls(host: str, trust: TrustRoot | None) -> IOpenSSLClientConnectionCreator:
    """Options verifying that ``host``'s certificate is signed by ``trust`` (None: the
    system's CAs) and names ``host``."""
    return optionsForClientTLS(host, trustRoot=trust)
