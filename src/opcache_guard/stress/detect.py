"""Detect corruption and crashes in replies, the FPM log and transport failures.

A finding is anything that cannot happen with sound code and a sound cache. These are a
check whose hash, table digest, class name or method name differs from what the file
expects, a PHP exception or fatal error, and PHP output on stderr. So are a reply that is
not 200 or not JSON, a worker that died on a signal or reported a corrupted heap, and a
request that failed while no reload was running. Each finding carries the OPcache state of the latest sample.

Not findings, but counted: checks of files that a newer deploy had removed ("gone"),
requests whose round had already expired, and requests dropped while a USR2 reload of the
master was in progress. The deploy design keeps the first two near zero (see deploy.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from opcache_guard.fastcgi import Response
from opcache_guard.sample import Sample

EXAMPLES_PER_KIND = 5
MAX_FINDING_TIMES = 20_000

_CHILD_PID = re.compile(r"child (\d+)")
_LOG_PATTERNS = (
    ("heap_corrupted", re.compile(r"zend_mm_heap corrupted")),
    ("worker_crash", re.compile(r"SIGSEGV|SIGBUS|SIGABRT|exited on signal")),
)
_FATAL = re.compile(rb"Fatal error|PHP Parse error")


@dataclasses.dataclass
class Finding:
    """One piece of evidence of corruption or a crash."""

    kind: str
    time: float
    round: int | None
    file: str
    pid: int | None
    detail: str
    opcache: dict[str, Any] | None


class ReloadWindows:
    """Time spans during which a USR2 reload of the master was in progress."""

    def __init__(self) -> None:
        self._spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def add(self, start: float, end: float) -> None:
        """Record a reload from start to end, in time.monotonic() seconds."""
        with self._lock:
            self._spans.append((start, end))

    def contains(self, moment: float) -> bool:
        """Return whether moment falls in a recorded reload."""
        with self._lock:
            return any(start <= moment <= end for start, end in self._spans)

    def __len__(self) -> int:
        return len(self._spans)


class Detector:
    """Collect findings and counters from every thread of a run.

    Arguments:
        started: time.monotonic() at the start of the run; finding times are relative to it.
        reloads: the reload windows, so dropped requests during a reload are not findings.
    """

    def __init__(self, started: float, reloads: ReloadWindows | None = None) -> None:
        self.started = started
        self.reloads = reloads or ReloadWindows()
        self.counts: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.examples: dict[str, list[Finding]] = {}
        self.finding_times: list[tuple[float, str]] = []
        self.latest: Sample | None = None
        self._lock = threading.Lock()

    @property
    def total_findings(self) -> int:
        return sum(self.by_kind.values())

    def record(self, kind: str, detail: str, *, round_no: int | None = None, file: str = "",
               pid: int | None = None) -> None:
        """Record one finding with the OPcache state of the latest sample."""
        moment = time.monotonic() - self.started
        latest = self.latest
        opcache = latest.to_dict()["opcache"] if latest is not None else None
        finding = Finding(kind, round(moment, 3), round_no, file, pid, detail[:500], opcache)
        with self._lock:
            self.by_kind[kind] += 1
            examples = self.examples.setdefault(kind, [])
            if len(examples) < EXAMPLES_PER_KIND:
                examples.append(finding)
            if len(self.finding_times) < MAX_FINDING_TIMES:
                self.finding_times.append((finding.time, kind))

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a plain counter (requests, checks, gone, ...)."""
        with self._lock:
            self.counts[name] += amount

    def check_reply(self, round_no: int, reply: Response) -> None:
        """Check one reply of the entry script and record what is wrong with it."""
        self.count("requests")
        if reply.stderr.strip():
            kind = "php_fatal" if _FATAL.search(reply.stderr) else "php_stderr"
            self.record(kind, _text(reply.stderr), round_no=round_no)
        if reply.status != 200:
            self.record("http_status", f"HTTP {reply.status}: {_text(reply.body)}",
                        round_no=round_no)
            return
        if _FATAL.search(reply.body):
            self.record("php_fatal", _text(reply.body), round_no=round_no)
            return
        try:
            data = json.loads(reply.body)
        except ValueError:
            self.record("bad_reply", f"reply is not JSON: {_text(reply.body)}", round_no=round_no)
            return
        self._check_report(round_no, data)

    def _check_report(self, round_no: int, data: dict[str, Any]) -> None:
        pid = data.get("pid")
        with self._lock:
            self.counts["checks"] += int(data.get("checks", 0))
            self.counts["passed"] += int(data.get("passed", 0))
            self.counts["gone"] += int(data.get("gone", 0))
            self.counts["expired"] += int(bool(data.get("expired")))
        for check in data.get("results", []):
            if check.get("ok"):
                continue
            for kind, detail in check_problems(check):
                self.record(kind, detail, round_no=round_no, file=str(check.get("file", "")),
                            pid=pid)

    def check_error(self, round_no: int, error: Exception, sent_at: float) -> None:
        """Record a failed request, unless a reload of the master explains it."""
        self.count("requests")
        if self.reloads.contains(sent_at) or self.reloads.contains(time.monotonic()):
            self.count("dropped_during_reload")
            return
        self.record("request_failed", str(error), round_no=round_no)

    def check_log_line(self, line: str) -> None:
        """Record a worker crash or heap corruption named in an FPM log line."""
        for kind, pattern in _LOG_PATTERNS:
            if pattern.search(line):
                match = _CHILD_PID.search(line)
                self.record(kind, line.strip(), pid=int(match[1]) if match else None)
                return


def check_problems(check: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (kind, detail) for each way one failed check went wrong."""
    problems = []
    if "error" in check:
        problems.append(("php_exception", str(check["error"])))
    if check.get("hash_ok") is False:
        problems.append(("hash_mismatch", "md5($this->data) differs from $this->hash"))
    if check.get("table_ok") is False:
        problems.append(("table_mismatch", "the table's JSON digest differs from the literal"))
    if "class" in check and check.get("class") != check.get("expected_class"):
        problems.append(("class_mismatch", (f"static::class is {check.get('class')!r}, "
                                           f"expected {check.get('expected_class')!r}")))
    if "method" in check and check.get("method") != check.get("expected_method"):
        problems.append(("method_mismatch", (f"__FUNCTION__ is {check.get('method')!r}, "
                                            f"expected {check.get('expected_method')!r}")))
    if not problems:
        problems.append(("check_failed", json.dumps(check)[:300]))
    return problems


class LogWatcher:
    """Read lines appended to the FPM log since the watcher was created."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        if path is not None and path.exists():
            self._offset = path.stat().st_size

    def poll(self, detector: Detector) -> None:
        """Pass every new complete line to the detector."""
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            detector.check_log_line(line.decode(errors="replace"))


def _text(data: bytes) -> str:
    return data.decode(errors="replace").strip().replace("\n", " | ")[:300]
