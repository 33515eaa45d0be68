"""Certificates and kubeconfigs for the local control plane."""

import base64
import ipaddress

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.devcluster import pki


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return pki.generate(tmp_path_factory.mktemp("pki"), "10.96.0.0/16")


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_apiserver_certificate_covers_loopback_service_ip_and_in_cluster_names(generated):
    cert = _cert(generated.apiserver_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.96.0.1")}
    assert set(sans.get_values_for_type(x509.DNSName)) >= {
        "localhost", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_every_certificate_is_signed_by_the_ca(generated):
    ca = _cert(generated.ca_cert)
    for path in [generated.apiserver_cert, *(generated.client_cert(c.file_stem) for c in pki.CLIENTS)]:
        _cert(path).verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    ("stem", "user", "groups"),
    [
        ("admin", "shoal-admin", ["system:masters"]),
        ("controller-manager", "system:kube-controller-manager", []),
        ("scheduler", "system:kube-scheduler", []),
    ],
)
def test_client_certificates_carry_the_identity_rbac_expects(generated, stem, user, groups):
    subject = _cert(generated.client_cert(stem)).subject
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [user]
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == groups


def test_private_keys_are_readable_only_by_their_owner(generated):
    assert generated.ca_key.stat().st_mode & 0o077 == 0
    assert generated.service_account_key.stat().st_mode & 0o077 == 0


def test_first_service_ip_is_the_first_host_of_the_range():
    assert pki.first_service_ip("10.96.0.0/16") == "10.96.0.1"
    assert pki.first_service_ip("172.20.0.0/24") == "172.20.0.1"


def test_client_certificate_kubeconfig_embeds_ca_and_credentials(generated, tmp_path):
    config = pki.kubeconfig("https://127.0.0.1:6443", generated.ca_cert, "shoal-admin",
                            client_cert=generated.client_cert("admin"),
                            client_key=generated.client_key("admin"))
    path = pki.write_kubeconfig(tmp_path / "kubeconfig", config)
    loaded = yaml.safe_load(path.read_text())
    cluster = loaded["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == generated.ca_cert.read_bytes()
    user = loaded["users"][0]["user"]
    assert base64.b64decode(user["client-key-data"]) == generated.client_key("admin").read_bytes()
    assert loaded["current-context"] == loaded["contexts"][0]["name"]
    assert path.stat().st_mode & 0o077 == 0


def test_token_kubeconfig_has_token_and_namespace(generated):
    config = pki.kubeconfig("https://127.0.0.1:1", generated.ca_cert, "op", token="abc",
                            namespace="shoal-system")
    assert config["users"][0]["user"] == {"token": "abc"}
    assert config["contexts"][0]["context"]["namespace"] == "shoal-system"


def test_kubeconfig_needs_exactly_one_kind_of_credential(generated):
    with pytest.raises(ValueError):
        pki.kubeconfig("https://x", generated.ca_cert, "u")
    with pytest.raises(ValueError):
        pki.kubeconfig("https://x", generated.ca_cert, "u", token="t",
                       client_cert=generated.client_cert("admin"),
                       client_key=generated.client_key("admin"))
