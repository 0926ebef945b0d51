"""Complete restart runs that a crash or a kill left unfinished, from the journal.

For each unresolved run of the host, the last journaled state decides:

- ACQUIRING: nothing had changed yet. A slot the dead run may hold is freed and the run is
  marked ABORTED; the agent restarts the host at its next check if the restart is still due.
- DEPOOLING, DRAINING, DISABLING: the host may be depooled and the restart is still due, so
  the run continues from that step (each step is safe to repeat) through restart and pool.
- RESTARTING: the master may be stopped, running old, or running new. A new master (proved
  against the journaled baseline) is verified as is; a master that is down is started; an
  old one is restarted. Then verify and pool.
- VERIFYING, POOLING, RELEASING: the run continues from that step.
- ABORTING: the host is put back as it was and the slot released.
- FAILED: left alone, because an operator must look first; with ``pool_failed`` the run
  goes through RESTARTING again (start the master if down, verify) and pools the host.

Every resumed run first frees the slot its dead owner left (``release_stale``) and takes a
new one, waiting at most ``slot_timeout``: the host is out of service while it works.
A run that another live process is working on is left to it.
"""

from __future__ import annotations

import logging

from opcache_guard.restart.journal import Journal
from opcache_guard.restart.machine import Outcome, SafeRestart
from opcache_guard.restart.settings import Backends, HostConfig
from opcache_guard.restart.states import Run, State, owner_token

log = logging.getLogger("opcache_guard.restart")


def repair(host: HostConfig, backends: Backends, *, dry_run: bool = False,
           pool_failed: bool = False, slot_timeout: float | None = None) -> list[Outcome]:
    """Complete or report every unresolved restart run of the host; return their outcomes."""
    journal = Journal(backends.store)
    outcomes = []
    for run in reversed(journal.runs(host.name, unresolved=True)):
        outcome = _repair_run(host, backends, journal, run, dry_run, pool_failed,
                              host.restart.slot_timeout if slot_timeout is None else slot_timeout)
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


def _repair_run(host: HostConfig, backends: Backends, journal: Journal, run: Run,
                dry_run: bool, pool_failed: bool, slot_timeout: float) -> Outcome | None:
    where = f"{host.name}/{host.pool_names}"
    if run.in_progress:
        log.info("leaving run %d of %s to its owner %s, which still works on it (%s)", run.id,
                 where, run.owner.partition(":")[0], run.state.name)
        return None
    if run.state == State.FAILED and not pool_failed:
        log.warning("leaving FAILED run %d of %s out of the load balancer: %s; fix it, then "
                    "repair with --pool-failed or run opcache-guard pool", run.id, where,
                    run.error)
        return Outcome(run.id, run.state, run.error or "FAILED")
    if dry_run:
        log.info("would repair run %d of %s from state %s (%s)", run.id, where,
                 run.state.name, run.reason)
        return Outcome(run.id, run.state, f"would repair from {run.state.name}")
    backends.slots.release_stale(host.group, host.name)
    machine = SafeRestart(host, backends, force=run.forced, reason=run.reason)
    machine.run_record = run
    if run.state == State.ACQUIRING:
        machine._move(State.ABORTING, "interrupted while taking a slot, before any change")
        return machine.resume(run, None)
    slot = backends.slots.acquire(host.group, host.name, f"repair: {run.reason}", slot_timeout)
    if slot is None:
        message = machine.slot_wait_message()
        log.warning("failed to repair run %d of %s: no slot within %g s; %s", run.id, where,
                    slot_timeout, message)
        return Outcome(run.id, run.state, message, waited_for_slot=True)
    journal.record(run, run.state, f"repair took over from {run.owner}; slot {slot.token}",
                   owner=owner_token(), slot_token=slot.token)
    if run.state == State.FAILED:
        machine._move(State.RESTARTING, "repair --pool-failed: check the master, verify, pool")
    return machine.resume(run, slot)
