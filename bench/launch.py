"""Run one command and write its wall time, peak RSS and CPU time as JSON (``bench/run.py``).

Why a launcher: Linux counts the pages a forked child shares with its parent and keeps the
high-water mark across ``exec``. A child of the benchmark, which grows to 100 MB and more
while it generates datasets, reports through ``wait4`` at least the benchmark's own size,
however small the child is (``/bin/true`` under a parent holding 300 MB: 313 MB; started
with vfork, the parent's peak even after it freed it). This launcher is a fresh interpreter of
~7 MB: the command it forks starts from that, so ``wait4`` gives the command's own peak (the
floor, the launcher's size, is below every command measured). Wall time is taken here, from
``fork`` to ``wait4``, so the launcher's own start-up is not counted.

Usage: ``python -I -S bench/launch.py REPORT.json CMD [ARG...]``. The exit status is the
command's (128 + N when a signal N ended it, 127 when it could not be started).
"""

import contextlib
import ctypes
import json
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> None:
    """``sig`` to this process when its parent dies (Linux), so nothing outlives the bench.

    A twin of ``run.py``'s: importing ``run.py`` here would make the launcher as big as
    some of what it measures. Set here too, so the launcher is safe when run on its own."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: launch.py REPORT.json CMD [ARG...]", file=sys.stderr)
        return 2
    report, cmd = argv[0], argv[1:]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the command: dies with this launcher, as the launcher dies with the bench
        _die_with_parent(signal.SIGTERM)
        try:
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            print(f"launch.py: cannot run {cmd[0]}: {exc}", file=sys.stderr)
        os._exit(127)
    _pid, status, usage = os.wait4(pid, 0)  # retried on EINTR by Python itself (PEP 475)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    with open(report, "w", encoding="utf-8") as out:
        json.dump(
            {
                "wall": wall,
                "exit_code": code,
                "peak_rss_kib": usage.ru_maxrss,
                "user": usage.ru_utime,
                "system": usage.ru_stime,
            },
            out,
        )
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    _die_with_parent(signal.SIGKILL)
    sys.exit(main(sys.argv[1:]))
