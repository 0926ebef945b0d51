"""Deploy rounds of generated code the way rsync-style deploys do.

Layout under the stress root (a directory only we can write, readable by the workers)::

    entry.php               includes one round's files, reports every check as JSON
    reset.php               calls opcache_reset(), for reset storms
    live/fNNNNNN.php        the deployed tree: rewritten in place, added to, removed from
    manifests/rNNNNNN.php   the sorted file names of round N, written once, never changed

Each round rewrites a fraction of the live files in place (new class, new content, new
mtime), adds new files and removes some. Rewrites leave the old compiled copy behind in
OPcache as wasted memory; new manifests and files take new hash keys. Together they fill the
cache until OPcache restarts itself.

Why legitimate races are not reported as corruption:

- A request names its round, and the manifest of that round never changes, so the request
  includes a fixed list of files. Manifests are kept for ``keep_rounds`` rounds after they were
  current, then deleted.
- A removed file leaves the newest manifest at once, but stays on disk until every manifest
  that lists it has been deleted, one round later. Only in-place rewrites keep a path, and
  every version of a file validates itself, so reading an older or newer version than the
  round's is still a passing check.
- Files appear by rename with their final mtime, so a worker never reads half a file.
- A request older than the kept window (a stalled worker) finds its manifest or a file gone;
  the entry script counts that as expired or gone, which the detector tallies apart from
  findings.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
import time
from pathlib import Path

from opcache_guard.errors import ConfigError
from opcache_guard.stress.codegen import (
    ENTRY_SOURCE,
    RESET_SOURCE,
    generate_file,
    manifest_source,
    prepare_private_dir,
    write_atomic,
)

log = logging.getLogger(__name__)

ENTRY = "entry.php"
RESET = "reset.php"


@dataclasses.dataclass(frozen=True)
class DeployPlan:
    """How much each round changes.

    Arguments:
        files: files in the first round, and the size the tree keeps around.
        rewrite: fraction of live files rewritten in place each round.
        add: new files per round, as a fraction of ``files``.
        remove: fraction of live files removed each round.
        keep_rounds: rounds a manifest stays usable after a newer one is published.
        data_size: lowest and highest length of each file's random data, in bytes.
    """

    files: int = 40
    rewrite: float = 0.5
    add: float = 0.1
    remove: float = 0.1
    keep_rounds: int = 8
    data_size: tuple[int, int] = (200, 6000)

    def validate(self) -> None:
        """Raise ConfigError for values that cannot make a sensible deploy."""
        if not 1 <= self.files <= 5000:
            raise ConfigError(f"files per round {self.files} is outside 1-5000")
        for label, value in (("rewrite", self.rewrite), ("add", self.add),
                             ("remove", self.remove)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{label} fraction {value:g} is outside 0-1")
        if self.keep_rounds < 2:
            raise ConfigError(f"keep_rounds {self.keep_rounds} must be at least 2, or requests "
                              "for the previous round would find their files removed")
        low, high = self.data_size
        if not 1 <= low <= high <= 1_000_000:
            raise ConfigError(f"data size {low}-{high} bytes must satisfy 1 <= low <= high "
                              "<= 1000000")


@dataclasses.dataclass
class RoundInfo:
    """Changes of one round, as file names inside ``live/``."""

    round: int
    time: float
    written: list[str]
    added: list[str]
    removed: list[str]
    deleted: list[str]
    live: int


class Deployer:
    """Write the stress tree and publish one round at a time.

    ``deploy`` is called from one thread; ``current_round`` may be read from any thread.

    Arguments:
        root: the stress root; created if missing, and must be ours and not writable by others.
        seed: the run's seed; the same seed and plan write byte-identical files.
        plan: how much each round changes.
        fault: "" or a codegen fault name; the broken file is added in ``fault_round`` and
            never rewritten or removed.
        fault_round: the round that adds the broken file.
        mtime_base: mtime of round 0's files; round N's files get ``mtime_base + N``. It is
            in the past, so OPcache's file_update_protection does not keep files uncached.
        dry_run: compute rounds without writing anything.
    """

    def __init__(self, root: Path, seed: int, plan: DeployPlan, *, fault: str = "",
                 fault_round: int = 1, mtime_base: float | None = None,
                 dry_run: bool = False) -> None:
        plan.validate()
        self.root = root
        self.seed = seed
        self.plan = plan
        self.fault = fault
        self.fault_round = fault_round
        self.mtime_base = mtime_base if mtime_base is not None else int(time.time()) - 86400
        self.dry_run = dry_run
        self.current_round = -1
        self._live: set[str] = set()
        self._pinned: set[str] = set()
        self._removed_at: dict[str, int] = {}
        self._next_file = 0

    @property
    def live_dir(self) -> Path:
        return self.root / "live"

    @property
    def manifest_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def entry_path(self) -> Path:
        return self.root / ENTRY

    @property
    def reset_path(self) -> Path:
        return self.root / RESET

    def manifest_path(self, round_no: int) -> Path:
        """Return where the manifest of a round is written."""
        return self.manifest_dir / f"r{round_no:06d}.php"

    def setup(self) -> None:
        """Create the directories and write the entry and reset scripts.

        Raises:
            StressError: a directory is unsafe or a file cannot be written.
        """
        if self.dry_run:
            return
        for directory in (self.root, self.live_dir, self.manifest_dir):
            prepare_private_dir(directory)
        for path, source in ((self.entry_path, ENTRY_SOURCE), (self.reset_path, RESET_SOURCE)):
            write_atomic(path, source.encode(), self.mtime_base)

    def deploy(self) -> RoundInfo:
        """Write and publish the next round, then delete what no request can use any more.

        Raises:
            StressError: a file cannot be written.
        """
        round_no = self.current_round + 1
        rewritten, added, removed = self._choose(round_no)
        mtime = self.mtime_base + round_no
        for name in rewritten + added:
            fault = self.fault if name in self._pinned else ""
            generated = generate_file(self.seed, round_no, name, fault, self.plan.data_size)
            if not self.dry_run:
                write_atomic(self.live_dir / name, generated.source, mtime)
        self._live.difference_update(removed)
        for name in removed:
            self._removed_at[name] = round_no
        if not self.dry_run:
            write_atomic(self.manifest_path(round_no),
                         manifest_source(round_no, sorted(self._live)), mtime)
        self.current_round = round_no
        deleted = self._delete_expired(round_no)
        return RoundInfo(round_no, time.time(), rewritten, added, removed, deleted,
                         len(self._live))

    def _new_name(self) -> str:
        self._next_file += 1
        return f"f{self._next_file:06d}.php"

    def _choose(self, round_no: int) -> tuple[list[str], list[str], list[str]]:
        """Pick the files to rewrite, add and remove in a round, from the seed alone."""
        plan = self.plan
        if round_no == 0:
            added = [self._new_name() for _ in range(plan.files)]
        else:
            added = [self._new_name() for _ in range(round(plan.add * plan.files))]
        if self.fault and round_no == self.fault_round:
            name = f"fault-{self.fault}.php"
            self._pinned.add(name)
            added.append(name)

        rng = random.Random(f"opcache-guard/{self.seed}/plan/{round_no}")
        candidates = sorted(self._live - self._pinned)
        removed = sorted(rng.sample(candidates, round(plan.remove * len(candidates))))
        remaining = sorted(set(candidates) - set(removed))
        rewritten = sorted(rng.sample(remaining, round(plan.rewrite * len(remaining))))
        self._live.update(added)
        return rewritten, added, removed

    def _delete_expired(self, round_no: int) -> list[str]:
        expired_manifest = round_no - self.plan.keep_rounds
        deleted = sorted(name for name, removed_at in self._removed_at.items()
                         if removed_at <= expired_manifest)
        for name in deleted:
            del self._removed_at[name]
        if self.dry_run:
            return deleted
        if expired_manifest >= 0:
            self.manifest_path(expired_manifest).unlink(missing_ok=True)
        for name in deleted:
            (self.live_dir / name).unlink(missing_ok=True)
        return deleted

    def remove_tree(self) -> None:
        """Delete the whole stress root; for roots the harness created itself."""
        if not self.dry_run:
            shutil.rmtree(self.root, ignore_errors=True)
