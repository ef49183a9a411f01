"""Triage: claim cases, ask the engine (many requests in flight), save verdicts, route.

The pump keeps up to SAFEGUARD_MAX_IN_FLIGHT engine requests open per worker process. Messages only
wake it up: it claims the cases it was given, then keeps claiming pending cases from Postgres
(SKIP LOCKED) while there is room, so the GPU stays full whatever size the ingested batches were.
Database work happens in batches on the task's thread; HTTP happens on the engine runner's loop
(runner.py). Claims are in claims.py, what becomes of the answers in outcomes.py, the sweep in sweep.py.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
from django.db import transaction
from django.utils import timezone

from audit import services as audit
from config import publish
from inference_worker import embeddings, funnel, verdicts
from inference_worker.breaker import CircuitBreaker
from inference_worker.claims import CaseWork, cases_claim, cases_claim_for_triage, cases_hold
from inference_worker.engine import (
    MUST_PROPAGATE,
    EngineError,
    EngineRequest,
    EngineUnavailable,
    Transport,
    engine_judge,
)
from inference_worker.outcomes import (
    CaseOutcome,
    EngineCall,
    cases_route_without_engine,
    triage_outcomes_save,
)
from inference_worker.runner import EngineConfig, EngineRunner, engine_breaker, engine_runner
from moderation.models import Case
from moderation.routing import triage_needs_escalation

logger = logging.getLogger(__name__)

# A pump stops claiming new work after this long, then drains (at most two engine timeouts), so a task
# stays under its 900 s soft limit. Long, because each drain leaves the engine idle for a moment (~4% of
# throughput at 60 s, measured with bench/triage.py).
PUMP_SECONDS = 300.0
# When Postgres has no pending cases, look again after this long (new messages may wait behind us).
REFILL_IDLE_SECONDS = 0.25
CIRCUIT_OPEN = "circuit open: the engine has been failing"
# A case held back by the breaker is looked at again no sooner than this, whatever the breaker says.
HOLD_MIN_SECONDS = 0.5


async def case_judge(
    work: CaseWork, config: EngineConfig, transport: Transport, session: aiohttp.ClientSession
) -> CaseOutcome:
    outcome = CaseOutcome(work=work)
    for tier, model, effort in config.tiers(is_appeal=work.is_appeal):
        request = EngineRequest(
            policy_text=work.policy_text,
            content=work.content,
            effort=effort,
            model=model,
            max_tokens=config.max_tokens,
        )
        try:
            reply = await engine_judge(transport, session, request)
            verdict = verdicts.verdict_parse(reply.final_text, policy_rule_ids=work.rule_ids)
        except EngineUnavailable as exc:
            outcome.calls.append(EngineCall(tier, model, effort, None, None, str(exc)))
            if outcome.verdict is None:
                outcome.unavailable = str(exc)
            return outcome
        except BaseException as exc:
            # EngineError, and anything else a reply made our code (or native code under it: a tokenizer
            # panic is a BaseException) raise: this case's failed attempt, never the pump's death.
            # Cancellation and interpreter exit still go through.
            if isinstance(exc, MUST_PROPAGATE):
                raise
            if not isinstance(exc, EngineError):
                logger.exception("engine reply for case %s could not be handled", work.case_id)
            error = str(exc) if isinstance(exc, EngineError) else _unexpected(exc)
            outcome.calls.append(EngineCall(tier, model, effort, None, None, error))
            if outcome.verdict is None:
                outcome.failed = error
            return outcome
        outcome.calls.append(EngineCall(tier, model, effort, reply, verdict))
        if not triage_needs_escalation(
            work.policy, verdict=verdict.label, confidence=verdict.confidence or ""
        ):
            return outcome
    return outcome


def _unexpected(exc: BaseException) -> str:
    return f"engine reply could not be handled ({type(exc).__name__}: {str(exc)[:200]})"


@dataclass
class PumpStats:
    claimed: int = 0
    saved: int = 0
    max_in_flight: int = 0


def cases_triage_without_engine(*, case_ids: list[int], config: EngineConfig) -> PumpStats:
    """No safeguard endpoint: the funnel clears what it can; the rest goes to humans, saying why."""
    if not embeddings.model_available():
        routed = cases_route_without_engine(case_ids=case_ids)
        return PumpStats(claimed=routed, saved=routed)
    works = cases_claim_for_triage(case_ids=case_ids, limit=len(case_ids))
    if works:
        triage_outcomes_save([CaseOutcome(work=w) for w in funnel.works_funnel(works)], config)
    return PumpStats(claimed=len(works), saved=len(works))


def cases_triage(*, case_ids: list[int], config: EngineConfig | None = None) -> PumpStats:
    """Triage the given cases, and any other pending ones while there is room (see module docstring).

    With the funnel on, each claimed batch is scored in one batched encode on the funnel thread; what it
    clears is saved with the engine results, the rest is sent to the engine.

    The pump claims as many cases as the circuit breaker lets start (an attempt is counted per case
    claimed to be sent), and keeps claiming until a claim finds nothing claimable. The cases this message
    named that it could not claim (the breaker held them back, or the pump's time was up) are settled
    before it returns: held until the breaker lets requests through, given to humans, or re-enqueued.
    """
    config = config or EngineConfig.from_settings()
    if not config.base_url:
        return cases_triage_without_engine(case_ids=case_ids, config=config)
    pump = _Pump(
        config=config,
        runner=engine_runner(config),
        breaker=engine_breaker(config),
        named=list(case_ids),
        deadline=time.monotonic() + PUMP_SECONDS,
    )
    while True:
        found = pump.refill()
        pump.landed_save()
        if not pump.busy and not found:
            break
        pump.wait()
    pump.stats.saved += _cases_hold(pump.named, pump.breaker, config)
    return pump.stats


@dataclass
class _Pump:
    """One triage task's pump: the cases on the engine and on the funnel, and the outcomes to save."""

    config: EngineConfig
    runner: EngineRunner
    breaker: CircuitBreaker
    # Claimed before any other pending case; what is left of them when the pump ends is settled then.
    named: list[int]
    deadline: float
    stats: PumpStats = field(default_factory=PumpStats)
    in_flight: dict[concurrent.futures.Future[CaseOutcome], CaseWork] = field(default_factory=dict)
    scoring: dict[concurrent.futures.Future[list[CaseWork]], list[CaseWork]] = field(default_factory=dict)
    next_refill: float = 0.0
    unsaved: list[CaseOutcome] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(self.in_flight or self.scoring)

    def refill(self) -> bool:
        """Claim what there is room for and the breaker lets start, and start it; True if the claim found
        any case."""
        room = self.config.max_in_flight - len(self.in_flight) - sum(len(w) for w in self.scoring.values())
        now = time.monotonic()
        # With nothing in flight, claim at once: the pump ends only when a claim finds nothing.
        if room <= 0 or now >= self.deadline or (self.busy and now < self.next_refill):
            return False
        allowance = self.breaker.allowance()
        limit = int(min(room, allowance))
        claimed = cases_claim(
            case_ids=self.named or None,
            limit=limit,
            config=self.config,
            engine_failing=allowance != math.inf,
        )
        count = len(claimed.to_send) + len(claimed.to_give_up)
        if self.named and limit > 0:
            taken = {w.case_id for w in (*claimed.to_send, *claimed.to_give_up)}
            self.named = [] if count < limit else [pk for pk in self.named if pk not in taken]
        elif count < limit:
            self.next_refill = now + REFILL_IDLE_SECONDS
        if claimed.to_give_up:
            triage_outcomes_save([_given_up(w, self.config) for w in claimed.to_give_up], self.config)
            self.stats.saved += len(claimed.to_give_up)
        self._start(claimed.to_send)
        self.stats.claimed += count
        self.stats.max_in_flight = max(self.stats.max_in_flight, len(self.in_flight))
        return count > 0

    def _start(self, works: list[CaseWork]) -> None:
        """To the funnel's scoring first when it is on (appeals skip it: a human sees them), else to the
        engine."""
        if not self.config.funnel:
            self._send(works)
            return
        to_score = [w for w in works if not w.is_appeal]
        if to_score:
            fitted = funnel.funnel_prepare(to_score)
            self.scoring[funnel.funnel_executor().submit(funnel.works_score, to_score, fitted)] = to_score
        self._send([w for w in works if w.is_appeal])

    def _send(self, works: list[CaseWork]) -> None:
        for work in works:
            self.in_flight[self.runner.submit(partial(case_judge, work, self.config))] = work

    def landed_save(self) -> None:
        # Saved after the refill, not before: the engine is already working on the replacements while
        # Postgres writes these (the save is most of the pump's time).
        if self.unsaved:
            triage_outcomes_save(self.unsaved, self.config)
            self.stats.saved += len(self.unsaved)
            self.unsaved = []

    def wait(self) -> None:
        """Wait a little for engine calls or funnel scoring to land; what landed waits to be saved."""
        waiting: list[concurrent.futures.Future[Any]] = [*self.in_flight, *self.scoring]
        if not waiting:
            return
        done, _ = concurrent.futures.wait(waiting, timeout=REFILL_IDLE_SECONDS, return_when="FIRST_COMPLETED")
        if not done:
            return
        judged = [future for future in self.in_flight if future in done]
        self.unsaved = [_judged_outcome(future, self.in_flight.pop(future), self.config) for future in judged]
        for scored in [future for future in self.scoring if future in done]:
            self.unsaved.extend(self._scored_route(scored, self.scoring.pop(scored)))
            self.stats.max_in_flight = max(self.stats.max_in_flight, len(self.in_flight))
        # Recorded before the refill, so an engine that just failed gets no new requests.
        engine_outcomes = [o for o in self.unsaved if o.calls or o.unavailable]
        successes = sum(1 for o in engine_outcomes if o.verdict is not None)
        self.breaker.record(successes=successes, failures=sum(1 for o in engine_outcomes if o.unavailable))

    def _scored_route(
        self, future: concurrent.futures.Future[list[CaseWork]], works: list[CaseWork]
    ) -> list[CaseOutcome]:
        """Cleared works become outcomes to save; the rest go to the engine (all of them if scoring
        failed)."""
        try:
            scored = future.result()
        except Exception:
            logger.exception("funnel scoring failed; %d cases go to the engine unscored", len(works))
            scored = works
        self._send([w for w in scored if w.funnel is None or not w.funnel.cleared])
        return [CaseOutcome(work=w) for w in scored if w.funnel is not None and w.funnel.cleared]


def _judged_outcome(
    future: concurrent.futures.Future[CaseOutcome], work: CaseWork, config: EngineConfig
) -> CaseOutcome:
    """The engine's outcome for ``work``; whatever the call raised is that case's failed attempt."""
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        # The runner's loop was stopped under the call (a settings change): no answer, try again later.
        return CaseOutcome(work=work, unavailable="engine call cancelled")
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        logger.exception("engine call for case %s failed", work.case_id)
        tier, model, effort = config.tiers(is_appeal=work.is_appeal)[0]
        error = _unexpected(exc)
        return CaseOutcome(
            work=work, calls=[EngineCall(tier, model, effort, None, None, error)], failed=error
        )


def _given_up(work: CaseWork, config: EngineConfig) -> CaseOutcome:
    """A case the engine had its chances with: to humans as "engine unavailable", no new attempt used.

    The attempts stored on the case stay what was really sent.
    """
    waited = f"{config.give_up_after_seconds:g} s"
    return CaseOutcome(
        work=work,
        unavailable=f"gave up: the engine has been failing and the case waited over {waited}",
        give_up=True,
    )


def _cases_hold(case_ids: list[int], breaker: CircuitBreaker, config: EngineConfig) -> int:
    """Settle named cases the pump did not claim; returns how many went to humans.

    While the breaker holds requests back, each waits (no attempt used) until a request may start again,
    and one that has already waited give_up_after goes to humans. With the breaker closed (the pump's
    time ran out) they are simply re-enqueued.
    """
    if not case_ids:
        return 0
    delay = breaker.seconds_until_retry()
    if delay <= 0:
        publish.triage_enqueue(case_ids=case_ids)
        return 0
    given_up = cases_claim(
        case_ids=case_ids, limit=len(case_ids), config=config, engine_failing=True, give_up_only=True
    ).to_give_up
    if given_up:
        triage_outcomes_save([_given_up(w, config) for w in given_up], config)
    now = timezone.now()
    reason = f"waiting for the engine ({CIRCUIT_OPEN}); no attempt used"
    with transaction.atomic():
        held = cases_hold(
            case_ids=case_ids,
            reason=reason,
            delay=max(delay, HOLD_MIN_SECONDS),
            min_delay=HOLD_MIN_SECONDS,
            give_up_after=config.give_up_after_seconds,
        )
        audit.record_many(
            "case.triaged",
            actor=None,
            objects=[
                (Case(pk=pk), {"state": Case.State.PENDING_TRIAGE, "reason": reason, "engine_calls": 0})
                for pk in sorted(held)
            ],
        )
        wake_ups: dict[int, list[int]] = defaultdict(list)
        for pk, not_before in held.items():
            wake_ups[max(0, math.ceil((not_before - now).total_seconds()))].append(pk)
        for countdown, pks in wake_ups.items():
            transaction.on_commit(partial(publish.triage_enqueue, case_ids=sorted(pks), countdown=countdown))
    return len(given_up)
