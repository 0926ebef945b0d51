"""Benchmark: the cost of one probe, as a ratio to a raw FastCGI ping in the same run.

Starts its own php-fpm master on loopback, then times, in interleaved rounds so that machine
noise hits every variant alike:

- ping: a raw FastCGI request for the ping path (the baseline);
- status page: the FPM status page (json);
- probe, installed script: a full probe with a fixed status script;
- probe, script per call: a full probe writing the status script for each call and reading
  the status page (the default);
- probe, fpm_get_status(): the same with the FPM state from fpm_get_status() in the script.

Usage: python bench/probe_bench.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from opcache_guard import procs
from opcache_guard.config import ProbeSettings, pool_from_address
from opcache_guard.fastcgi import FastCGIClient
from opcache_guard.fpm import local
from opcache_guard.probe import Prober, status_script_source


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="Timed calls per variant.")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="opcache-guard-bench-"))
    os.chmod(directory, 0o755)
    spec = local.MasterSpec("bench", directory / "master", f"127.0.0.1:{procs.free_port()}")
    local.write_files(spec)
    pid = local.start(spec)
    try:
        pool = pool_from_address(spec.listen, "bench")
        installed_pool = pool_from_address(spec.listen, "bench")
        installed = spec.docroot / "opcache-status.php"
        installed.write_bytes(status_script_source())
        installed_pool.script_path = str(installed)
        function_pool = pool_from_address(spec.listen, "bench")
        function_pool.fpm_status = "function"
        prober = Prober(ProbeSettings(script_dir=directory / "probe"))

        def ping() -> None:
            with FastCGIClient(spec.listen) as client:
                client.get(local.PING_PATH, local.PING_PATH)

        variants: dict[str, Callable[[], object]] = {
            "ping (baseline)": ping,
            "status page": lambda: prober.status_page(pool),
            "probe, installed script": lambda: prober.probe(installed_pool),
            "probe, script per call": lambda: prober.probe(pool),
            "probe, fpm_get_status()": lambda: prober.probe(function_pool),
        }
        for function in variants.values():
            for _ in range(20):
                function()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, function in variants.items():
                times[name].append(timed(function))
    finally:
        local.stop(spec, pid)
        shutil.rmtree(directory, ignore_errors=True)

    baseline = statistics.median(times["ping (baseline)"])
    print(f"php-fpm {spec.listen}, {args.rounds} calls per variant, medians")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:26s} {median * 1000:7.3f} ms   ratio to ping {median / baseline:5.2f}")


if __name__ == "__main__":
    main()
