"""The credentials ``make_credentials`` writes hold for a SuperLink on another host.

The server certificate is checked the way a SuperNode's TLS client checks it (a
handshake on loopback that verifies each name), and field by field with
``cryptography``; the node keys are read with Flower's own loaders and must sign
and verify as SuperNode authentication does.
"""

import datetime
import ipaddress
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fl_app.deploy.deployment import make_credentials

HOSTS = ("superlink.example.org", "10.1.2.3")


@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    return make_credentials(tmp_path_factory.mktemp("certs"), 2, hosts=HOSTS)


def load_certificate(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def handshake(credentials, server_hostname):
    """Serve one TLS handshake on loopback with the SuperLink's certificate and
    connect to it as a client that trusts the CA and expects ``server_hostname``."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(credentials.server_cert, credentials.server_key)
    client_context = ssl.create_default_context(cafile=str(credentials.ca_cert))
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve():
            conn, _ = listener.accept()
            try:
                with server_context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused the certificate

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw:
                with client_context.wrap_socket(raw, server_hostname=server_hostname):
                    pass
        finally:
            thread.join(timeout=10)


@pytest.mark.parametrize("name", [*HOSTS, "localhost", "127.0.0.1"])
def test_credentials_tls_handshake_succeeds_for_each_named_host(credentials, name):
    # Execute, Assert: Python's ssl (what Flower's HTTP clients use) verifies the
    # chain to the CA, the validity period and the name; it raises otherwise
    handshake(credentials, name)


@pytest.mark.parametrize("name", ["other.example.org", "10.1.2.4"])
def test_credentials_tls_handshake_fails_for_an_unnamed_host(credentials, name):
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(credentials, name)


def test_credentials_server_certificate_names_the_hosts_and_the_local_names(
    credentials,
):
    # Prepare
    server = load_certificate(credentials.server_cert)
    # Execute
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    # Assert: the names given, and those the SuperLink's own SuperExec dials
    assert set(names.value.get_values_for_type(x509.DNSName)) == {
        "superlink.example.org",
        "localhost",
    }
    assert set(names.value.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("127.0.0.1"),
    }
    common_name = server.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert common_name[0].value == "superlink.example.org"


def test_credentials_server_certificate_is_signed_by_the_ca_and_valid_now(
    credentials,
):
    # Prepare
    ca = load_certificate(credentials.ca_cert)
    server = load_certificate(credentials.server_cert)
    now = datetime.datetime.now(datetime.UTC)
    # Execute, Assert: the CA's public key verifies the certificate's signature
    # (raises InvalidSignature otherwise)
    ca.public_key().verify(
        server.signature,
        server.tbs_certificate_bytes,
        ec.ECDSA(server.signature_hash_algorithm),
    )
    assert server.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for cert in (ca, server):
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    # the key the SuperLink serves with is the certificate's (ssl raises otherwise)
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
        credentials.server_cert, credentials.server_key
    )


def test_credentials_node_keys_are_matching_ecdsa_pairs_flower_reads(credentials):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_public_key,
        public_key_to_bytes,
        sign_message,
        verify_signature,
    )

    assert len(credentials.node_keys) == 2
    registered = set()
    for private_path, public_path in credentials.node_keys:
        # Prepare: the private key as flower-supernode --auth-supernode-private-key
        # loads it, the public key as `flwr supernode register` loads it
        private = load_ssh_private_key(private_path.read_bytes(), None)
        public_bytes = try_load_public_key(public_path)
        # Execute: the SuperNode signs, the SuperLink verifies with the registered key
        signature = sign_message(private, b"2026-12-05T00:00:00Z")
        # Assert
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP384R1)
        assert public_key_to_bytes(private.public_key()) == public_bytes
        assert verify_signature(
            bytes_to_public_key(public_bytes), b"2026-12-05T00:00:00Z", signature
        )
        assert private_path.stat().st_mode & 0o077 == 0  # owner only
        registered.add(public_bytes)
    assert len(registered) == 2  # one key per node
    assert credentials.server_key.stat().st_mode & 0o077 == 0
