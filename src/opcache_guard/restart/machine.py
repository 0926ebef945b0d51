"""The safe restart state machine.

``SafeRestart.run`` takes a slot, notes whether the host is pooled, depools it, waits until
it has drained, disables it, restarts php-fpm, verifies the new master, pools the host
again and releases the slot. ``_move`` is the only place that changes a run's state: it
checks the transitions table, logs the change and writes the journal before the step runs.

Decisions kept here:

- A host that was not pooled when the run began (someone else depooled it) is restarted
  but left out: the load balancer is not touched at all.
- When the host has not drained within ``drain_timeout``, the run is aborted: the host is
  pooled back and the slot released. ``force`` restarts without depooling, so an operator
  who accepts dropped requests reruns with ``--force``.
- A failure from the restart on (or a failed verification) ends in FAILED. The host is
  depooled and stays out until an operator acts, and it is reported CRITICAL. Its slot is
  pinned, so it keeps counting against the group's limit. A check that fails before the
  running master is stopped (FpmCheckError) aborts instead: the host goes back as it was.
- Before the restart, the slot is refreshed: a slot lost during a long drain aborts the run.
- A dry run logs every step with "would". It takes no slot, writes no journal row, sends
  no signal and changes no load balancer state, but read-only calls still run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from opcache_guard.errors import FpmCheckError, GuardError, RestartError
from opcache_guard.fpm.base import wait_for_next_second
from opcache_guard.lb.base import LbState
from opcache_guard.restart import verify as checks
from opcache_guard.restart.journal import Journal
from opcache_guard.restart.settings import Backends, HostConfig
from opcache_guard.restart.states import (
    ON_ERROR,
    STOPPED,
    Run,
    State,
    check_transition,
    owner_token,
)
from opcache_guard.slots.base import Slot

log = logging.getLogger("opcache_guard.restart")

_VERBS = {
    State.ACQUIRING: "taking a slot for",
    State.DEPOOLING: "depooling",
    State.DRAINING: "draining",
    State.DISABLING: "disabling",
    State.RESTARTING: "restarting",
    State.VERIFYING: "verifying",
    State.POOLING: "pooling",
    State.RELEASING: "releasing the slot of",
    State.DONE: "restarted",
    State.ABORTING: "aborting the restart of",
    State.ABORTED: "aborted the restart of",
    State.SKIPPED: "skipped the restart of",
    State.FAILED: "FAILED to restart",
}
_LEVELS = {State.ABORTING: logging.WARNING, State.ABORTED: logging.WARNING,
           State.FAILED: logging.ERROR}


@dataclasses.dataclass
class Outcome:
    """The end of a run: its id (0 in a dry run), final state and a one-line summary."""

    run_id: int
    state: State
    message: str
    waited_for_slot: bool = False


class SafeRestart:
    """One safe restart of one host, run or resumed through the journal."""

    def __init__(self, host: HostConfig, backends: Backends, *, force: bool = False,
                 dry_run: bool = False, reason: str = "operator request",
                 slot_timeout: float | None = None,
                 on_enter: Callable[[State], None] | None = None) -> None:
        self.host = host
        self.backends = backends
        self.force = force
        self.dry_run = dry_run
        self.reason = reason
        self.slot_timeout = host.restart.slot_timeout if slot_timeout is None else slot_timeout
        self.on_enter = on_enter
        self.journal = Journal(backends.store)
        self.slot: Slot | None = None
        self.resumed = False
        self.run_record = Run(0, host.name, host.group, reason, State.ACQUIRING, force, None,
                              "", {}, time.time(), time.time(), "", owner_token())
        self._summary = ""

    @property
    def where(self) -> str:
        """The host and its pools, as log lines name them: ``app1/www,api``."""
        return f"{self.host.name}/{self.host.pool_names}"

    def run(self) -> Outcome:
        """Run a new safe restart to its end; see the module docstring for the decisions."""
        self._reject_concurrent_run()
        if not self.dry_run:
            self.run_record = self.journal.create(self.host.name, self.host.group, self.reason,
                                                  self.force)
        prefix = "would take" if self.dry_run else "taking"
        log.info("%s a slot of group %s for %s: %s", prefix, self.host.group, self.where,
                 self.reason)
        if self.on_enter is not None:
            self.on_enter(State.ACQUIRING)
        return self._loop()

    def _reject_concurrent_run(self) -> None:
        """Raise RestartError while an earlier run of this host is FAILED or unfinished."""
        for run in self.journal.runs(self.host.name, unresolved=True):
            if run.in_progress:
                fix = f"wait until process {run.owner.partition(':')[0]} finishes it"
            elif run.state == State.FAILED:
                fix = "fix the host, then run 'opcache-guard repair --pool-failed'"
            else:
                fix = "run 'opcache-guard repair' to complete it"
            message = f"cannot restart {self.where}: {run.describe()}; {fix}"
            if not self.dry_run:
                raise RestartError(message)
            log.warning("%s", message)

    def resume(self, run: Run, slot: Slot | None) -> Outcome:
        """Continue a run from its journal state, holding slot (None in a dry run)."""
        self.run_record = run
        self.slot = slot
        self.resumed = True
        self.force = run.forced
        return self._loop()

    def close_by_operator(self, run: Run) -> None:
        """Close a FAILED run whose host the operator has just pooled again."""
        self.run_record = run
        self._move(State.POOLING, "the operator pools the host after fixing it")
        self._move(State.RELEASING, "pooled by the operator")
        self._release_slot()
        self._move(State.DONE, "closed by the operator's pool command")

    def _loop(self) -> Outcome:
        while self.run_record.state not in STOPPED:
            state = self.run_record.state
            try:
                _STEPS[state](self)
            except GuardError as exc:
                if state == State.RELEASING:
                    log.warning("failed to release the slot of %s: %s", self.where, exc)
                    self._move(State.DONE, f"slot release failed ({exc}); it expires")
                    continue
                target = ON_ERROR[state]
                if isinstance(exc, FpmCheckError):
                    # Nothing was stopped, so the host can go back into service as it was.
                    target = State.ABORTING
                self._move(target, f"{state.name.lower()} failed: {exc}", error=str(exc))
        if self.run_record.state == State.FAILED:
            self._fail()
        return Outcome(self.run_record.id, self.run_record.state,
                       self._summary or self.run_record.error or self.run_record.state.name,
                       waited_for_slot=self.run_record.state == State.SKIPPED)

    def _move(self, state: State, why: str, **fields: object) -> None:
        """Check, log and journal a state change, before the step of the new state runs.

        Raises:
            RestartError: the transitions table does not allow the change.
        """
        run = self.run_record
        check_transition(run.state, state)
        verb = _VERBS[state]
        prefix = "would be " if self.dry_run and state not in STOPPED else ""
        log.log(_LEVELS.get(state, logging.INFO), "%s%s %s: %s", prefix, verb, self.where, why)
        if self.dry_run:
            run.state = state
            for key, value in fields.items():
                setattr(run, key, value)
        else:
            self.journal.record(run, state, why, **fields)
        if self.on_enter is not None:
            self.on_enter(state)

    # The steps. Each performs the action its state names, then moves on.

    def _acquire(self) -> None:
        slots = self.backends.slots
        policy = slots.policy(self.host.group)
        if self.dry_run:
            holders = slots.holders(self.host.group)
            free = policy.max_out() - len(holders)
            log.info("would take a slot of group %s: %d of %d free now", self.host.group,
                     max(free, 0), policy.max_out())
        else:
            self.slot = slots.acquire(self.host.group, self.host.name, self.reason,
                                      self.slot_timeout)
            if self.slot is None:
                self._summary = self.slot_wait_message()
                self._move(State.SKIPPED, f"no slot within {self.slot_timeout:g} s; "
                           f"{self._summary}", error=self._summary)
                return
        lb_state = self.backends.lb.state()
        pooled = lb_state == LbState.POOLED
        baseline = checks.read_baseline(self.backends.prober, self.host.base.pools,
                                        self.backends.fpm)
        token = self.slot.token if self.slot else ""
        fields = {"slot_token": token, "was_pooled_before": pooled, "baseline": baseline}
        if self.force:
            self._move(State.RESTARTING, f"forced: restarting in the load balancer state "
                       f"{lb_state.value}, without depooling", **fields)
        elif pooled:
            self._move(State.DEPOOLING, "slot taken, host pooled", **fields)
        else:
            self._move(State.DEPOOLING, f"slot taken; the host is {lb_state.value} already, so "
                       "the load balancer stays as found and the host is not pooled after",
                       **fields)

    def slot_wait_message(self) -> str:
        """Describe the group's slot holders: ``1/1 held by app2 (restart, 12 s)``."""
        slots = self.backends.slots
        policy = slots.policy(self.host.group)
        if not slots.lists_all_holders:
            return (f"waiting for a slot of group {self.host.group}: all {policy.max_out()} "
                    f"held by other processes, which the {slots.name} backend cannot list")
        holders = slots.holders(self.host.group)
        who = ", ".join(f"{h.host} ({h.reason}, {h.age:.0f} s)" for h in holders) or "nobody"
        return (f"waiting for a slot of group {self.host.group}: {len(holders)}/"
                f"{policy.max_out()} held by {who}")

    def _depool(self) -> None:
        if self.run_record.was_pooled_before:
            self.backends.lb.depool()
        self._move(State.DRAINING, f"depooled from {self.backends.lb.describe()}"
                   if self.run_record.was_pooled_before else "left the load balancer as found")

    def _drain(self) -> None:
        if self.dry_run:
            busy = checks.drain_status(self.backends.lb, self.backends.prober,
                                       self.host.base.pools)
            self._move(State.DISABLING, f"in flight now: {busy or 'nothing'}")
            return
        drained, detail = checks.wait_drained(self.backends.lb, self.backends.prober,
                                              self.host.base.pools, self.host.restart)
        if not drained:
            error = (f"not drained within drain_timeout {self.host.restart.drain_timeout:g} s "
                     f"({detail}); putting the host back as it was. Raise [restart] "
                     "drain_timeout, or rerun with --force to restart without depooling")
            self._move(State.ABORTING, error, error=error)
            return
        self._move(State.DISABLING, detail)

    def _disable(self) -> None:
        if self.slot is not None and not self.dry_run:
            # A long drain can outlast a lease (etcd stalls, a paused process): without the
            # slot, another host may be out already, so this one must not go further.
            self.slot.refresh()
        if self.run_record.was_pooled_before:
            self.backends.lb.disable()
        self._move(State.RESTARTING, f"restart due: {self.run_record.reason}")

    def _restart(self) -> None:
        fpm = self.backends.fpm
        if self.resumed and self._master_is_new():
            self._move(State.VERIFYING, f"found a new master running ({fpm.identity()})")
            return
        if self.resumed and not fpm.is_running():
            fpm.start()
            self._move(State.VERIFYING, f"started the master that was down: {fpm.describe()}")
            return
        if not self.dry_run:
            wait_for_next_second(checks.latest_start(self.run_record.baseline))
        fpm.restart()
        self._move(State.VERIFYING, f"restarted {fpm.describe()}")

    def _master_is_new(self) -> bool:
        prober = self.backends.prober
        identity = self.backends.fpm.identity()
        for pool in self.host.base.pools:
            if not prober.ping(pool):
                return False
            try:
                sample = prober.probe(pool)
            except GuardError:
                return False
            if checks.staleness(sample, self.run_record.baseline, identity):
                return False
        return True

    def _verify(self) -> None:
        if self.dry_run:
            self._move(State.POOLING, "would wait for a new, healthy OPcache on every pool")
            return
        summary = checks.verify(self.backends.prober, self.host.base.pools,
                                self.run_record.baseline, self.backends.fpm,
                                self.host.base.thresholds, self.host.restart,
                                self.backends.store)
        self._move(State.POOLING, summary)

    def _pool(self) -> None:
        if self.run_record.was_pooled_before:
            self.backends.lb.pool()
            note = f"pooled in {self.backends.lb.describe()}"
        else:
            note = "left out of the load balancer: it was not pooled before the restart"
        self._move(State.RELEASING, note)

    def _release(self) -> None:
        self._release_slot()
        self._summary = f"restarted {self.where}: {self.run_record.reason}"
        self._move(State.DONE, "slot released")

    def _release_slot(self) -> None:
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        elif not self.dry_run:
            self.backends.slots.release_stale(self.host.group, self.host.name)

    def _abort(self) -> None:
        if self.run_record.was_pooled_before and not self.force:
            self.backends.lb.pool()
        self._release_slot()
        self._summary = self.run_record.error or "aborted"
        self._move(State.ABORTED, "put back as it was; slot released")

    def _keep_slot(self) -> None:
        """Pin the slot, so the FAILED host keeps counting against its group's limit."""
        if self.slot is None:
            return
        if self.slot.pin():
            self.slot = None
            return
        # NOTE: PoolCounter frees a slot with its connection, so a FAILED host there is out
        # of service without a slot until an operator pools it. check reports it CRITICAL.
        log.warning("%s cannot keep a slot after this process exits; the FAILED host %s no "
                    "longer counts against group %s", self.backends.slots.name, self.where,
                    self.host.group)
        self._release_slot()

    def _fail(self) -> None:
        """Keep a FAILED host out of the load balancer, and its slot taken where possible."""
        if self.dry_run:
            return
        try:
            self.backends.lb.depool()
            self.backends.lb.disable()
        except GuardError as exc:
            log.error("failed to keep FAILED host %s out of the load balancer: %s", self.where,
                      exc)
        try:
            self._keep_slot()
        except GuardError as exc:
            log.warning("failed to keep the slot of %s: %s", self.where, exc)
        self._summary = (f"{self.where} FAILED and stays out of the load balancer: "
                         f"{self.run_record.error}; fix it, then run 'opcache-guard repair "
                         "--pool-failed' or 'opcache-guard pool'")


_STEPS: dict[State, Callable[[SafeRestart], None]] = {
    State.ACQUIRING: SafeRestart._acquire,
    State.DEPOOLING: SafeRestart._depool,
    State.DRAINING: SafeRestart._drain,
    State.DISABLING: SafeRestart._disable,
    State.RESTARTING: SafeRestart._restart,
    State.VERIFYING: SafeRestart._verify,
    State.POOLING: SafeRestart._pool,
    State.RELEASING: SafeRestart._release,
    State.ABORTING: SafeRestart._abort,
}
