"""TLS to Redis as docs/operations.md shows it: a ``rediss://`` URL whose
query names the CA, the client certificate and its key, against a real
redis-server that accepts only TLS clients with a certificate of that CA."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.servers import RedisProcess, ServiceProcess, free_port


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def certificates(tmp_path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=karmchari test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=tmp_path)
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=tmp_path)
        (tmp_path / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem", cwd=tmp_path)
    return tmp_path


def test_serve_over_mutual_tls(certificates, key_prefix):
    tls_port = free_port()
    server = RedisProcess("--tls-port", str(tls_port),
                          "--tls-cert-file", str(certificates / "server.pem"),
                          "--tls-key-file", str(certificates / "server.key"),
                          "--tls-ca-cert-file", str(certificates / "ca.pem"),
                          "--tls-auth-clients", "yes").start()
    url = (f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certificates / 'ca.pem'}"
           f"&ssl_certfile={certificates / 'client.pem'}"
           f"&ssl_keyfile={certificates / 'client.key'}")
    service = ServiceProcess("--redis-url", url, env={"KARMCHARI_KEY_PREFIX": key_prefix})
    try:
        service.start()
        request = urllib.request.Request(service.url + "/v1/jobs", method="POST",
                                         data=b'{"type": "teams"}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201
            job_id = json.loads(response.read())["id"]
        with urllib.request.urlopen(service.url + "/readyz", timeout=30) as response:
            assert response.status == 200
        admin = server.client()
        # The job is in the server the service reached only through TLS.
        assert admin.exists(f"{{{key_prefix}:{job_id[0]}}}:job:{job_id}") == 1
        names = [c["name"] for c in admin.client_list()]
        admin.close()
        assert "karmchari" in names
    finally:
        service.stop()
        server.close()
    assert "rediss://127.0.0.1" in service.log()
