"""A real S3 API on localhost for the tests: moto's server (`moto_server`, a separate process) with authentication
on, so a wrong key is refused as AWS would refuse it. The first few requests, unauthenticated, create an IAM user
with an S3 policy and its access key; after that every request must be signed with that key."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

MOTO = str(Path(sys.executable).with_name("moto_server"))
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """`env` holds what a process needs to reach the server (AWS_ENDPOINT_URL and the access key) as a user's
    shell would; `bucket` exists and is empty at the start."""

    def __init__(self, bucket: str = "detaux-test"):
        import boto3

        self.endpoint = f"http://127.0.0.1:{_free_port()}"
        port = self.endpoint.rsplit(":", 1)[1]
        # 3 unauthenticated calls: create_user, put_user_policy, create_access_key; then auth is enforced.
        self.proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", port], env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError("moto_server did not start") from None
                    time.sleep(0.2)
            iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                               aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
            iam.create_user(UserName="detaux")
            iam.put_user_policy(UserName="detaux", PolicyName="s3", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
            key = iam.create_access_key(UserName="detaux")["AccessKey"]
            self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_DEFAULT_REGION": REGION,
                        "AWS_EC2_METADATA_DISABLED": "true"}
            self.bucket = bucket
            self.client().create_bucket(Bucket=bucket)
        except BaseException:
            self.stop()
            raise

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def upload(self, local: Path, prefix: str) -> str:
        """Copy a local file or folder to s3://bucket/prefix; returns that URI."""
        local, c = Path(local), self.client()
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for f in files:
            key = prefix if local.is_file() else f"{prefix}/{f.relative_to(local).as_posix()}"
            c.upload_file(str(f), self.bucket, key)
        return f"s3://{self.bucket}/{prefix}"

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
