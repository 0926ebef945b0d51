"""Detection rules of the stress harness, fed with replies and log lines built by hand."""

from __future__ import annotations

import json
import time
from pathlib import Path

from opcache_guard.fastcgi import Response
from opcache_guard.stress.detect import Detector, LogWatcher, ReloadWindows


def reply(body: object, status: int = 200, stderr: bytes = b"") -> Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(status, {}, data, stderr, 0, 0.001)


def report(*results: dict[str, object], checks: int = 3) -> dict[str, object]:
    passed = checks - sum(1 for result in results if not result.get("ok"))
    return {"round": 4, "pid": 321, "checks": checks, "passed": passed, "gone": 0,
            "expired": False, "results": list(results)}


def test_mismatches_become_findings() -> None:
    detector = Detector(time.monotonic())
    bad = {"round": 4, "file": "f000002.php", "ok": False, "hash_ok": True, "table_ok": True,
           "class": "Abc_f2_r4", "expected_class": "Abd_f2_r4", "method": "run",
           "expected_method": "rnu"}
    detector.check_reply(4, reply(report(bad)))
    assert detector.by_kind == {"class_mismatch": 1, "method_mismatch": 1}
    finding = detector.examples["class_mismatch"][0]
    assert finding.round == 4
    assert finding.file == "f000002.php"
    assert finding.pid == 321
    assert detector.counts["checks"] == 3
    assert detector.counts["passed"] == 2


def test_exception_and_fatal_errors() -> None:
    detector = Detector(time.monotonic())
    error = {"file": "f1.php", "ok": False, "error": "Error: Class \"Abc\" not found"}
    detector.check_reply(1, reply(report(error)))
    detector.check_reply(1, reply(b"", 500, b"PHP Fatal error:  Cannot redeclare foo()"))
    detector.check_reply(1, reply(b"<html>oops</html>"))
    assert detector.by_kind == {"php_exception": 1, "php_fatal": 1, "http_status": 1,
                                "bad_reply": 1}


def test_gone_and_expired_are_not_findings() -> None:
    detector = Detector(time.monotonic())
    detector.check_reply(2, reply({"round": 2, "pid": 1, "checks": 0, "passed": 0, "gone": 2,
                                   "expired": False, "results": []}))
    detector.check_reply(2, reply({"round": 2, "pid": 1, "checks": 0, "passed": 0, "gone": 0,
                                   "expired": True, "results": []}))
    assert detector.total_findings == 0
    assert detector.counts["gone"] == 2
    assert detector.counts["expired"] == 1


def test_failures_during_reload_are_counted_apart() -> None:
    windows = ReloadWindows()
    now = time.monotonic()
    windows.add(now - 1, now + 60)
    detector = Detector(now, windows)
    detector.check_error(1, ConnectionResetError("reset"), now)
    assert detector.total_findings == 0
    assert detector.counts["dropped_during_reload"] == 1
    detector.check_error(1, ConnectionResetError("reset"), now - 5)
    assert detector.by_kind == {}
    outside = Detector(now)
    outside.check_error(1, ConnectionResetError("reset"), now)
    assert outside.by_kind == {"request_failed": 1}


def test_log_watcher_reads_new_crash_lines(tmp_path: Path) -> None:
    log = tmp_path / "php-fpm.log"
    log.write_text("[04-Dec-2026 10:00:00] WARNING: [pool www] child 11 exited on signal 11 "
                   "(SIGSEGV) after 1.0 seconds from start\n")
    watcher = LogWatcher(log)
    detector = Detector(time.monotonic())
    with log.open("a") as handle:
        handle.write("[04-Dec-2026 10:00:01] WARNING: [pool www] child 4242 exited on signal "
                     "11 (SIGSEGV - core dumped) after 3.2 seconds from start\n")
        handle.write("zend_mm_heap corrupted\n[04-Dec-2026 10:00:02] NOTICE: part")
    watcher.poll(detector)
    assert detector.by_kind == {"worker_crash": 1, "heap_corrupted": 1}
    assert detector.examples["worker_crash"][0].pid == 4242
