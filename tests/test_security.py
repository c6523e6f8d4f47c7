"""Security of the cluster connection: TLS to an external scheduler (flags or Dask's env config), a clean error
without certificates, a local dashboard bound to loopback, and the TLS/address helpers."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import zarr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from processes import stop

from phos_dask.cluster import ClusterError, connect, local_address, tls_security

#: The environment of every child process: no TLS or timeout settings inherited from the caller's Dask config.
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")} | {"PYTHONUNBUFFERED": "1"}
TLS_ENV = ("DASK_DISTRIBUTED__COMM__TLS__CA_FILE", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
           "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY")


def _write_tls_files(tmp: Path) -> tuple[str, str, str]:
    """A self-signed CA and one certificate + key it signed for 127.0.0.1/localhost (server and client use);
    returns the PEM paths (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=1)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phos_dask test CA")])
    ca = (x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder(subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
                                    issuer_name=ca_name, public_key=key.public_key(),
                                    serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return tuple(str(p) for p in paths)


def _run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phos_dask", *args], capture_output=True, text=True,
                          timeout=timeout, env={**BASE_ENV, **(env or {})})


def _assert_all_complete(out: Path, n: int) -> None:
    root = zarr.open_group(str(out), mode="r")
    keys = [k for k in root.group_keys() if not k.startswith("_")]
    assert len(keys) == n, keys
    for k in keys:
        assert root[k].attrs["phos"]["status"] == "complete", k


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, small_photo) -> Path:
    """Two small images (the job's content is not under test here, only the connection)."""
    src = tmp_path_factory.mktemp("tls-bucket")
    bgr = cv2.cvtColor(small_photo, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(src / "a.png"), bgr)
    cv2.imwrite(str(src / "b.jpg"), cv2.resize(bgr, (301, 203), interpolation=cv2.INTER_AREA))
    return src


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[str, str, str]:
    return _write_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, tls_files):
    """A TLS-only scheduler and two single-threaded worker processes on loopback, started with Dask's CLI;
    yields the scheduler's tls:// address. Every process is stopped at teardown (killed if need be)."""
    ca, cert, key = tls_files
    tls_flags = ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]
    sched_file = tmp_path_factory.mktemp("tls-cluster") / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    quiet = {"env": BASE_ENV, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "tls://127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file), *tls_flags], **quiet)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            assert procs[0].poll() is None, "scheduler exited"
            time.sleep(0.1)
        assert sched_file.exists(), "scheduler did not start"
        for _ in range(2):
            procs.append(subprocess.Popen([*dask, "worker", "--scheduler-file", str(sched_file), "--nworkers", "1",
                                           "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                                           "--memory-limit", "2GB", *tls_flags], **quiet))
        from distributed import Client

        security = tls_security(ca, cert, key)
        with Client(scheduler_file=str(sched_file), security=security, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
            address = c.scheduler.address
        assert address.startswith("tls://127.0.0.1:"), address
        yield address
    finally:
        # workers first, while they can still say goodbye to the scheduler (stopped together, they wait ~8 s)
        stop(procs[1:], timeout=15)
        stop(procs[:1], timeout=15)
        assert all(p.poll() is not None for p in procs), "a cluster process was left behind"


def test_tls_run_with_certificate_flags_completes_every_image(tls_cluster, tls_files, bucket, tmp_path):
    """`run --scheduler tls://… --tls-ca-file/--tls-cert/--tls-key` renders every image on the TLS cluster."""
    ca, cert, key = tls_files
    out = tmp_path / "flags.zarr"
    result = _run("run", str(bucket), "--out", str(out), "--film", "Portra400", "--scheduler", tls_cluster,
                  "--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key)
    assert result.returncode == 0, result.stderr
    _assert_all_complete(out, 2)


def test_tls_run_configured_by_dask_environment_variables(tls_cluster, tls_files, bucket, tmp_path):
    """Without --tls-* flags, Dask's own config (DASK_DISTRIBUTED__COMM__TLS__*) supplies the certificates."""
    env = dict(zip(TLS_ENV, tls_files, strict=True)) | {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
    out = tmp_path / "env.zarr"
    result = _run("run", str(bucket), "--out", str(out), "--film", "Portra400", "--scheduler", tls_cluster, env=env)
    assert result.returncode == 0, result.stderr
    _assert_all_complete(out, 2)


def test_tls_scheduler_without_certificates_exits_2_with_one_line(tls_cluster, bucket, tmp_path):
    """A tls:// scheduler with no certificate anywhere is a configuration error: exit 2, one line, no traceback."""
    result = _run("run", str(bucket), "--out", str(tmp_path / "none.zarr"), "--film", "Portra400",
                  "--scheduler", tls_cluster, env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}, timeout=60)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("phos_dask: error:")]
    assert len(errors) == 1 and "scheduler" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_local_cluster_and_its_dashboard_listen_only_on_loopback():
    """A local cluster's scheduler and its dashboard (given as a bare ':0') bind to 127.0.0.1, not all interfaces."""
    with connect(workers=1, dashboard_address=":0") as client:
        scheduler = client.cluster.scheduler
        assert scheduler.address.startswith("tcp://127.0.0.1:"), scheduler.address
        sockets = list(scheduler.http_server._sockets.values())
        assert sockets
        hosts = {s.getsockname()[0] for s in sockets}
        assert hosts == {"127.0.0.1"}, hosts


@pytest.mark.parametrize(
    ("given", "expected"),
    [(":0", "127.0.0.1:0"), ("0.0.0.0:8787", "0.0.0.0:8787"), ("8788", "127.0.0.1:8788"), ("", "127.0.0.1:8787")],
)
def test_local_address_makes_loopback_the_default_host(given, expected):
    """A dashboard address without a host binds to 127.0.0.1; a named host (even 0.0.0.0) is kept."""
    assert local_address(given) == expected


def test_tls_security_needs_a_certificate_with_the_ca(tls_files):
    """A CA file alone is not enough for a client: ClusterError naming the missing flag."""
    with pytest.raises(ClusterError, match="--tls-cert"):
        tls_security(tls_files[0], None, None)


def test_tls_security_names_a_missing_file(tls_files, tmp_path):
    """A TLS file that does not exist is a ClusterError naming that file."""
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ClusterError, match=re.escape(missing)):
        tls_security(tls_files[0], tls_files[1], missing)
    assert tls_security(*tls_files) is not None
