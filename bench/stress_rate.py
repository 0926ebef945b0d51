"""Compare the stress harness's request rate with wrk through HAProxy on the same pool.

Both drive the same entry script of one deployed round on one lab php-fpm master (4 workers,
roomy OPcache), with 8 requests in flight for 5 seconds and a new FastCGI connection per
request. wrk goes through HAProxy (FastCGI backend, ``no option keep-conn``). The harness
talks FastCGI directly and checks every reply, once with its asyncio client and once with its
threads client. A ratio near 1 or above means the harness is not the bottleneck: the
pool is.

Run: ``.venv/bin/python bench/stress_rate.py`` (needs php8.2-fpm, haproxy and wrk).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from opcache_guard import procs
from opcache_guard.fpm.local import OpcacheSettings
from opcache_guard.stress.deploy import Deployer, DeployPlan
from opcache_guard.stress.detect import Detector
from opcache_guard.stress.load import LoadSettings, LoadTarget, run_load
from opcache_guard.stress.target import Target, start_lab, stop_lab

DURATION = 5.0
CONCURRENCY = 8
SEED = 12345

HAPROXY_CONF = """\
global
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

fcgi-app php
    docroot {docroot}
    index entry.php
    no option keep-conn

frontend stress
    bind 127.0.0.1:{port}
    default_backend fpm

backend fpm
    use-fcgi-app php
    server fpm1 {fpm} proto fcgi maxconn {maxconn}
"""


def harness_rate(target: Target, deployer: Deployer, client: str) -> tuple[float, Detector]:
    """Run the harness's load for DURATION seconds and return requests per second."""
    detector = Detector(time.monotonic())
    entry = deployer.entry_path
    load_target = LoadTarget(
        address=target.pool.address, script_filename=str(entry),
        script_name="/" + entry.relative_to(target.docroot).as_posix(),
        current_round=lambda: deployer.current_round,
        on_reply=detector.check_reply, on_error=detector.check_error)
    settings = LoadSettings(concurrency=CONCURRENCY, duration=DURATION, client=client)
    elapsed = run_load(load_target, settings, threading.Event())
    return detector.counts["requests"] / elapsed, detector


def wrk_rate(target: Target, deployer: Deployer, workers: int, directory: Path) -> float:
    """Run wrk through a HAProxy started for the purpose and return requests per second."""
    port = procs.free_port()
    conf = directory / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(docroot=target.docroot, port=port,
                                        fpm=target.pool.address, maxconn=workers))
    haproxy = procs.require_program(["haproxy"], "haproxy")
    process = procs.spawn([haproxy, "-f", str(conf), "-db"], directory / "haproxy.log")
    try:
        if not procs.wait_until(lambda: procs.port_open("127.0.0.1", port), 5.0):
            raise RuntimeError(f"HAProxy did not listen on 127.0.0.1:{port}; see "
                               f"{directory / 'haproxy.log'}")
        path = "/" + deployer.entry_path.relative_to(target.docroot).as_posix()
        url = f"http://127.0.0.1:{port}{path}?round={deployer.current_round}"
        output = subprocess.run(
            ["wrk", "-t2", f"-c{CONCURRENCY}", f"-d{DURATION:g}s", url],
            capture_output=True, text=True, check=True, timeout=DURATION + 30).stdout
    finally:
        procs.stop(process.pid, str(conf))
    if "Non-2xx" in output:
        raise RuntimeError(f"wrk saw failed replies:\n{output}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"cannot read wrk's rate from:\n{output}")
    return float(match[1])


def main() -> None:
    """Measure and print the rates and the ratios."""
    workers = 4
    settings = OpcacheSettings(memory_consumption=64, interned_strings_buffer=8,
                               max_accelerated_files=10000, max_wasted_percentage=10)
    target = start_lab(settings, workers)
    deployer = Deployer(target.docroot / "opcache-guard-stress-bench", SEED, DeployPlan())
    try:
        deployer.setup()
        deployer.deploy()
        with tempfile.TemporaryDirectory(prefix="stress-bench-") as scratch:
            baseline = wrk_rate(target, deployer, workers, Path(scratch))
        rates = {client: harness_rate(target, deployer, client) for client in ("asyncio",
                                                                               "threads")}
    finally:
        stop_lab(target)

    print(f"pool: 1 php-fpm master, {workers} workers, {DeployPlan().files} files per request, "
          f"{CONCURRENCY} in flight, {DURATION:g} s each")
    print(f"wrk -t2 -c{CONCURRENCY} through HAProxy: {baseline:9.1f} requests/s (baseline)")
    for client, (rate, detector) in rates.items():
        findings = detector.total_findings
        print(f"harness, {client:8} client:     {rate:9.1f} requests/s, ratio "
              f"{rate / baseline:.2f}, {detector.counts['checks']} checks, {findings} findings")


if __name__ == "__main__":
    main()
