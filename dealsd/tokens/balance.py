"""Keepa's token balance for one key, as predicted between responses.

The balance lives on Keepa's side and is shared by everything using the key, so
this model is only a prediction between responses: every envelope (``apply``)
replaces it with the server's numbers. Between responses the model adds the
refill at each step (the first at sync time + ``refillIn``, then one per learned
period) up to Keepa's cap of 60 x the rate. The period is learned from the
envelopes (``refillIn`` bounds it below, the spacing of refill instants pins
it), so a simulator with 100 ms "minutes" needs no configuration; until it is
pinned, only the announced step is credited and a probe may ask at the shortest
period the evidence allows. Spending by another user of the key shows as a
drain in the server's ledger and is taken off the predicted refill. No
threshold anywhere is tied to a plan.

Who may spend the predicted tokens, and when, is the scheduler's business
(``dealsd.tokens``); this module only says how many there are and when more
come.
"""

from __future__ import annotations

import math

import structlog

from dealsd.keepa.payloads import Envelope

log = structlog.get_logger(__name__)

DEFAULT_PERIOD_S = 60.0
CAP_PERIODS = 60  # Keepa lets unused tokens expire after 60 refills.
# Another user of the key is learned slowly: a one-off spend should barely move
# the model, a steady one should be absorbed within a few tens of periods.
DRAIN_ALPHA = 0.1
# An envelope whose server timestamp is this much older than the newest seen is
# from a slower, earlier request: its balance is stale. Far older means the
# server clock was reset, and the envelope is believed.
STALE_WINDOW_MS = 120_000
# Timers may fire a hair early; a step this close counts as reached.
EPS = 1e-3
# Two refill instants closer than this many times the longest refillIn seen
# are one period apart (twice would be exact; the margin is latency noise).
PIN_SPAN = 1.5
# "Nice" periods to round a learned period up to: refillIn counts down from the
# period, so the largest value seen is at most the period and usually a little
# under it (latency), and under-estimating the period means over-predicting
# the balance.
_NICE = sorted(
    {m * 10.0**e for e in range(-2, 4) for m in (1.0, 2.0, 2.5, 5.0)}
    | {15.0, 30.0, 60.0, 90.0, 120.0, 300.0, 600.0, 3600.0}
)


def round_period(seen_s: float) -> float:
    """The period implied by the largest ``refillIn`` seen: the next nice value up."""
    floor = seen_s * 0.98  # within 2 % of a nice value is that value (jitter)
    for nice in _NICE:
        if nice >= floor:
            return nice
    return seen_s


class BalanceModel:
    """The predicted balance, refill rate and refill steps of one key.

    ``balance`` is public: the scheduler deducts each grant's expected cost at
    once and gives it back if the grant is cancelled. ``probe_due`` and
    ``scout_due`` are set here when a refill step passes and cleared by the
    scheduler when it grants the request that will learn from it.
    """

    def __init__(self) -> None:
        self.synced = False
        self.balance = 0.0
        self.rate = 0.0
        self.period = DEFAULT_PERIOD_S
        self.next_step: float | None = None
        # A step passed before the period is known: one request may ask (a probe).
        self.probe_due = False
        # Tokens added at a step are a prediction until an envelope confirms them.
        self.scout_due = False
        self._step_announced = False  # next_step is the refill an envelope announced
        # Refills the guessed steps would have brought at the shortest period
        # (never credited): a probe before they cover the deficit is a sure 429.
        self._guessed = 0.0
        # Period evidence: refillIn never exceeds the period (a lower bound),
        # and two distinct refill instants are a whole number of periods apart
        # (a spacing too short to be two periods is the period itself).
        self._period_seen = 0.0
        self._spacing: float | None = None
        self._last_instant: float | None = None
        self._last_ts: int | None = None
        # A ledger of the server's numbers between envelopes: what refills and
        # our own consumption explain, and the rest (another user of the key),
        # learned as a drain per period and taken off the predicted refill.
        self._ledger_left: int | None = None
        self._ledger_instant: float | None = None
        self._ledger_rate = 0.0
        self._ledger_consumed = 0
        self._drain_raw = 0.0
        self._drain_bucket = 0.0

    @property
    def period_known(self) -> bool:
        """Two refill instants have pinned the period (until then it is a guess)."""
        return self._spacing is not None

    # -- the server's truth --------------------------------------------------

    def note_consumed(self, tokens: int) -> None:
        """Our own spending, reported by any envelope (a stale one too)."""
        self._ledger_consumed += tokens

    def is_stale(self, envelope: Envelope) -> bool:
        if self._last_ts is None:
            return False
        behind = self._last_ts - envelope.timestamp
        return 0 < behind <= STALE_WINDOW_MS

    def apply(self, envelope: Envelope, now: float, *, in_flight: float) -> None:
        """Take the server's numbers; ``in_flight`` is what granted requests still owe."""
        self._learn_period(envelope.refill_in / 1000.0, now)
        rate = float(envelope.refill_rate)
        self._learn_drain(envelope, now, rate)
        if self.synced and rate != self.rate:
            log.info("tokens.refill_rate_changed", old=self.rate, new=rate)
        predicted = self.balance
        # Requests still in flight were deducted locally but may not be in the
        # server's number yet; subtracting them again at worst under-predicts
        # until their own envelopes arrive, which is the safe side.
        self.balance = envelope.tokens_left - in_flight
        if self.synced and abs(predicted - self.balance) > max(rate, 10.0):
            log.debug("tokens.resync", predicted=round(predicted, 1), server=envelope.tokens_left)
        self.rate = rate
        if envelope.refill_in >= 0:
            # refillIn 0 is a refill due now, not yet in tokensLeft.
            self.next_step = now + envelope.refill_in / 1000.0
            self._step_announced = True
        elif self.next_step is None:
            # Not said: the model keeps its own step, or guesses one period.
            self.next_step = now + self.period
        self._last_ts = envelope.timestamp
        self._guessed = 0.0
        self.probe_due = False
        self.scout_due = False
        self.synced = True

    def rate_limited(self) -> None:
        """A 429: the server's balance is <= 0 until the next refill."""
        self.balance = min(self.balance, 0.0)

    def _learn_period(self, refill_in: float, now: float) -> None:
        if refill_in <= 0:
            return
        self._period_seen = max(self._period_seen, refill_in)
        instant = now + refill_in
        if self._last_instant is not None:
            spacing = abs(instant - self._last_instant)
            # Closer than half the longest refillIn is the same refill seen
            # through different latencies, not a new one.
            if spacing > max(0.5 * self._period_seen, 0.002):
                # Two instants are k periods apart, and k is 1 only when the
                # spacing is under twice the longest refillIn (no period is
                # shorter). A wider one (a gap in answers: an outage, a quiet
                # hour) is an unknown multiple, so it pins nothing; taken as
                # the period, an outage of 18 refills taught a period of 18 s.
                if spacing < PIN_SPAN * self._period_seen and (
                    self._spacing is None or spacing < self._spacing
                ):
                    self._spacing = spacing
                self._last_instant = instant
        else:
            self._last_instant = instant
        # refillIn is computed by the server, so unlike the instants it carries
        # no latency: its maximum, rounded up, is the period. The smallest
        # spacing of instants (latency-noisy on a 100 ms simulator, so never
        # trusted below that) only raises it while few refillIns were seen.
        period = round_period(self._period_seen)
        if self._spacing is None:
            # One refill seen: refillIn alone can be far below the period, and
            # under-estimating it over-predicts the balance.
            period = max(DEFAULT_PERIOD_S, period)
        else:
            period = max(period, self._spacing)
        if period != self.period:
            log.info("tokens.period_learned", period_s=period, old_s=self.period)
            self.period = period

    def _learn_drain(self, envelope: Envelope, now: float, rate: float) -> None:
        """Tokens the server lost between two envelopes that we did not spend."""
        instant = now + envelope.refill_in / 1000.0 if envelope.refill_in > 0 else None
        prev_left, prev_instant = self._ledger_left, self._ledger_instant
        if (
            prev_left is not None
            and prev_instant is not None
            and instant is not None
            and self._spacing is not None  # refills can only be counted at a known period
            and rate == self._ledger_rate
        ):
            refills = round((instant - prev_instant) / self.period)
            if refills >= 0 and prev_left + refills * rate <= CAP_PERIODS * rate:
                self._drain_bucket += (
                    prev_left + refills * rate - envelope.tokens_left - self._ledger_consumed
                )
                if refills >= 1:
                    # Responses still in flight show up as drain in one bucket
                    # and give it back in a later one, so samples stay signed.
                    sample = min(max(self._drain_bucket / refills, -rate), rate)
                    self._drain_raw += DRAIN_ALPHA * (sample - self._drain_raw)
                    self._drain_bucket = 0.0
        self._ledger_left, self._ledger_instant = envelope.tokens_left, instant
        self._ledger_rate, self._ledger_consumed = rate, 0

    # -- the prediction between responses --------------------------------------

    def refill_per_step(self) -> float:
        """The predicted refill per step: the plan's rate less the learned drain."""
        drain = min(max(self._drain_raw, 0.0), 0.9 * self.rate)
        return self.rate - drain

    def advance(self, now: float) -> None:
        """Add the refills whose steps have passed since the last look."""
        if self.next_step is None or now + EPS < self.next_step:
            return
        if self._spacing is None:
            self.next_step = self._advance_unknown_period(self.next_step, now)
            return
        steps = math.floor((now + EPS - self.next_step) / self.period) + 1
        self._credit(steps * self.refill_per_step())
        self.next_step += steps * self.period
        self.scout_due = True

    def _advance_unknown_period(self, step: float, now: float) -> float:
        """Before two refill instants pin the period, only the announced step is sure.

        The step the last envelope announced (``refillIn``) gets its refill;
        later steps are guesses, so they credit nothing. One probe may ask at
        the announced step (its answer shows the next refill instant, one
        period on, which pins the period), and at a guessed step, spaced by
        the shortest period ``refillIn`` allows, once even that period would
        have covered the deficit: before, the probe is a sure 429 (after an
        outage that left the key at -140 with rate 20 that was one 429 a step,
        since no probe lost in the outage could pin anything). (Stepping by the
        default period instead parked the model a minute away whenever the one
        answer after the first step taught nothing, being stale or lost: on an
        accelerated simulator that stalled every grant for 600 "minutes".)
        Returns the next step.
        """
        shortest = round_period(self._period_seen) if self._period_seen > 0 else self.period
        passed = math.floor((now + EPS - step) / shortest) + 1
        guessed = passed
        if self._step_announced:
            self._credit(self.refill_per_step())
            self._step_announced = False
            self.scout_due = self.probe_due = True
            guessed -= 1
        self._guessed += guessed * self.refill_per_step()
        if guessed and self.balance + self._guessed >= 1.0:
            self.probe_due = True
        return step + passed * shortest

    def _credit(self, refill: float) -> None:
        # The cap stops refills; it never takes away a balance the server reported.
        cap = CAP_PERIODS * self.rate
        self.balance = max(self.balance, min(cap, self.balance + refill))

    def time_to(self, target: float, now: float) -> float:
        """Seconds until the predicted balance reaches ``target`` (inf if never)."""
        if self.balance + 1e-9 >= target:
            return 0.0
        if self.next_step is None or self.rate <= 0:
            return math.inf
        steps = math.ceil((target - self.balance - 1e-9) / self.refill_per_step())
        return max(0.0, self.next_step + (steps - 1) * self.period - now)
