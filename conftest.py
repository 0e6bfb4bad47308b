"""Fixtures every test tier shares: a real S3-compatible server on loopback.

Code that reads s3:// artifacts is tested over HTTP against moto's server, with
authentication on, so credentials, endpoints and errors take the same path as in production.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from modelfleet.devcluster.cluster import free_port

S3_REGION = "us-east-1"
ALLOW_EVERYTHING = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint, one valid key pair, and helpers to fill it."""

    endpoint: str
    access_key_id: str
    secret_access_key: str

    @property
    def env(self) -> dict[str, str]:
        """The variables that point boto3's default chain at this server, and nowhere else."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """An S3 client with this server's valid credentials."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 2}),
        )

    def upload_dir(self, local: Path, bucket: str, prefix: str) -> None:
        """Put every file under ``local`` at ``<prefix>/<relative path>``, creating the bucket."""
        client = self.client()
        if bucket not in {item["Name"] for item in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=bucket)
        for path in sorted(local.rglob("*")):
            if path.is_file():
                key = f"{prefix.strip('/')}/{path.relative_to(local).as_posix()}"
                client.upload_file(str(path), bucket, key)


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"moto server did not answer at {endpoint} within 60s: {log.read_text()}")


def _create_key_pair(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed everything, then authentication on for every later request."""
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="modelfleet-tests")
    iam.put_user_policy(
        UserName="modelfleet-tests",
        PolicyName="everything",
        PolicyDocument=json.dumps(ALLOW_EVERYTHING),
    )
    key = iam.create_access_key(UserName="modelfleet-tests")["AccessKey"]
    enforce = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(enforce, timeout=10):
        pass
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 and a free port, with IAM authentication enforced."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(endpoint, process, log)
        access_key_id, secret_access_key = _create_key_pair(endpoint)
        yield S3Server(endpoint, access_key_id, secret_access_key)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
