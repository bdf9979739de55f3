"""Plans, subscriptions and invoices (the store behind control/routes/billing.py).

Plans come from the configuration (``config.plans``). An account has at most one
subscription row; its life:

* ``POST /v1/subscription {plan_id}`` makes it ``pending`` with an open invoice for the first
  period. Only a paid invoice entitles: nothing plays while pending.
* Marking that invoice paid (an administrator, or a payment provider's hook) makes it
  ``active``: ``period_start = now``, ``period_end = now + period_days``.
* Renewal: once an active, not canceled subscription reaches ``period_end``, an open invoice
  for the next period is made (lazily: whenever the subscription, the invoices or the
  entitlement of the account are read). Paying it extends the period from the previous
  ``period_end``: the invoice buys the period it states, even when paid some days late (the
  days without access are not refunded). Only a payment after that whole period is over buys
  a period from now. Until it is paid the account is not entitled. Voiding it ends the
  subscription.
* ``PUT /v1/subscription {plan_id}`` on a paid-up subscription (active, or canceled at
  period end and still inside its period):

  - An upgrade (a plan with a higher price in the same currency) makes an open invoice of kind
    ``upgrade`` for the prorated difference: ``(new price - current price) x (period_end -
    now) / (period_end - period_start)``, computed exactly and rounded half up to a whole cent,
    at least 1 cent (see :func:`prorated_cents`). Its period is ``now .. period_end`` and its
    plan the new one. Nothing changes until it is paid: entitlement and the next renewal stay
    on the current plan. Paying it switches ``plan_id`` for the rest of the paid period (the
    period is not extended) and the renewal is then at the new price. Voiding it leaves the
    subscription on its current plan. An upgrade invoice can only be paid inside the period it
    was made for: once that period is over it is voided (when the renewal is made) and paying
    it is a Conflict.
  - A downgrade (same or lower price) is stored as ``next_plan_id`` and applies from the next
    period (the renewal invoice is for it). So is a change to a plan in another currency,
    which cannot be prorated.
  - Choosing the current plan again keeps it: it drops a scheduled downgrade or an unpaid
    upgrade.

  Each change replaces the previous pending one: an upgrade after a scheduled downgrade cancels
  the downgrade, a second upgrade while one is unpaid voids the first's invoice, a downgrade
  voids an unpaid upgrade's invoice. Any change of a subscription canceled at period end
  resumes it (``status = active``, it renews again at period end), for an upgrade already when
  it is requested, not when its invoice is paid. While the subscription is pending (first
  invoice unpaid), a change replaces the open invoice with one for the new plan.
* ``DELETE /v1/subscription`` cancels at period end (``status = canceled``,
  ``cancel_at_period_end = 1``): the plan stays usable until ``period_end``, no renewal is
  made. A pending subscription ends at once (its invoice is voided).
* A subscription that has ended (canceled and past its period, or lapsed: past its period
  with the renewal unpaid) may be replaced by a new ``POST``.

Invoices have a ``kind``: ``period`` (the first invoice or a renewal: it buys a period) or
``upgrade`` (the prorated difference of an upgrade: it buys the new plan for the rest of the
current period). An account has at most one open invoice at a time.

``entitlement(account_id)`` is the plan playback may use now: status active or canceled and
``now < period_end``; None otherwise (pending, expired, none).

Payment sits behind :class:`PaymentProvider`. The built-in :class:`ManualProvider` processes
no cards: an administrator marks invoices paid (``POST /v1/admin/invoices/{id}/paid``) after
the money arrived some other way. A provider integration would create its payment on
``create_invoice`` and call :meth:`BillingStore.mark_paid` from its webhook.

Every subscription change and payment serialises per account (``UPDATE accounts SET version
= version + 1`` first in the transaction), so concurrent requests cannot, say, both create a
subscription or both extend a period.
"""

from __future__ import annotations

import logging
import math
import secrets
from fractions import Fraction
from typing import Any, Protocol

from .config import PlanConfig
from .db import IntegrityError, Tx
from .errors import BadRequest, Conflict, NotFound

log = logging.getLogger("control")

DAY = 86400.0
SUBSCRIPTION_STATUSES = ("pending", "active", "canceled")
INVOICE_STATUSES = ("open", "paid", "void")
INVOICE_KINDS = ("period", "upgrade")

_INVOICE_COLS = (
    "id, account_id, plan_id, amount_cents, currency, status, period_start, period_end, "
    "provider, reference, created_at, paid_at, kind"
)
_SUB_COLS = (
    "account_id, plan_id, status, period_start, period_end, cancel_at_period_end, "
    "next_plan_id, updated_at"
)


class PaymentProvider(Protocol):
    """How invoices get paid. ``name`` is stored with each invoice."""

    name: str

    async def create_invoice(self, invoice: dict[str, Any]) -> str | None:
        """Called once a new open invoice is committed; may return the provider's reference
        for it (stored in ``invoices.reference``). Must not raise for a transient failure of
        its own: the invoice stays open and can be paid later."""
        ...


class ManualProvider:
    """No card processing: an administrator marks invoices paid."""

    name = "manual"

    async def create_invoice(self, invoice: dict[str, Any]) -> str | None:
        return None


def plan_json(p: PlanConfig) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "max_streams": p.max_streams,
        "max_height": p.max_height,
        "price_cents": p.price_cents,
        "currency": p.currency,
        "period_days": p.period_days,
    }


def invoice_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "account_id": row["account_id"],
        "plan_id": row["plan_id"],
        "amount_cents": int(row["amount_cents"]),
        "currency": row["currency"],
        "status": row["status"],
        "period_start": float(row["period_start"]),
        "period_end": float(row["period_end"]),
        "provider": row["provider"],
        "reference": row["reference"],
        "created_at": float(row["created_at"]),
        "paid_at": None if row["paid_at"] is None else float(row["paid_at"]),
        "kind": row["kind"],
    }


def prorated_cents(diff_cents: int, period_start: float, period_end: float, now: float) -> int:
    """What an upgrade costs for the rest of a paid period: ``diff_cents`` (the difference of
    the two plans' prices per period) times the fraction of the period still to come,
    ``(period_end - now) / (period_end - period_start)``.

    Rounding: the product is computed exactly (as fractions of the stored float times) and
    rounded half up to a whole cent (0.5 cent and more up, less down); the result is at
    least 1 cent, so an upgrade in the last moments of a period is never free. A degenerate
    period (``period_end <= period_start``) counts as wholly remaining.
    """
    if diff_cents <= 0:
        raise ValueError("an upgrade costs more")
    length = Fraction(period_end) - Fraction(period_start)
    remaining = Fraction(period_end) - Fraction(now)
    fraction = (
        Fraction(1) if length <= 0 else min(Fraction(1), max(Fraction(0), remaining / length))
    )
    return max(1, math.floor(diff_cents * fraction + Fraction(1, 2)))


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


class BillingStore:
    def __init__(self, control: Any, provider: PaymentProvider | None = None) -> None:
        self.control = control
        self.provider: PaymentProvider = provider or ManualProvider()
        self.plans: dict[str, PlanConfig] = {p.id: p for p in control.config.plans}

    @property
    def db(self) -> Any:
        return self.control.db

    def _now(self) -> float:
        return float(self.control.clock())

    def plan(self, plan_id: str) -> PlanConfig:
        p = self.plans.get(plan_id)
        if p is None:
            raise BadRequest(
                f"invalid body: plan_id: no plan {plan_id!r}",
                {"fields": {"plan_id": f"must be one of {', '.join(self.plans)}"}},
            )
        return p

    # -- reading ----------------------------------------------------------------------------

    def subscription_json(self, row: dict[str, Any], now: float) -> dict[str, Any]:
        plan = self.plans.get(row["plan_id"])
        return {
            "plan_id": row["plan_id"],
            "plan": plan_json(plan) if plan else None,
            "status": row["status"],
            "period_start": _opt(row["period_start"]),
            "period_end": _opt(row["period_end"]),
            "cancel_at_period_end": bool(row["cancel_at_period_end"]),
            "next_plan_id": row["next_plan_id"],
            "entitled": self._entitled(row, now) is not None,
            "updated_at": float(row["updated_at"]),
        }

    def _entitled(self, row: dict[str, Any] | None, now: float) -> PlanConfig | None:
        if row is None or row["status"] not in ("active", "canceled"):
            return None
        end = row["period_end"]
        if end is None or now >= end:
            return None
        return self.plans.get(row["plan_id"])

    @staticmethod
    async def _sub(tx: Any, account_id: str) -> dict[str, Any] | None:
        row: dict[str, Any] | None = await tx.fetchone(
            f"SELECT {_SUB_COLS} FROM subscriptions WHERE account_id = ?", (account_id,)
        )
        return row

    @staticmethod
    async def _open_invoice(
        tx: Any, account_id: str, kind: str | None = None
    ) -> dict[str, Any] | None:
        """The account's newest open invoice (of ``kind``, if given)."""
        sql = f"SELECT {_INVOICE_COLS} FROM invoices WHERE account_id = ? AND status = 'open'"
        params: tuple[Any, ...] = (account_id,)
        if kind is not None:
            sql += " AND kind = ?"
            params = (account_id, kind)
        row: dict[str, Any] | None = await tx.fetchone(
            sql + " ORDER BY created_at DESC, id LIMIT 1", params
        )
        return row

    @staticmethod
    def _live(row: dict[str, Any] | None, now: float) -> bool:
        """Pending, or paid up (active or canceled) and inside its period."""
        if row is None:
            return False
        if row["status"] == "pending":
            return True
        return row["period_end"] is not None and now < row["period_end"]

    async def entitlement(self, account_id: str) -> PlanConfig | None:
        """The plan playback may use now, or None (pending, expired, canceled and over, none)."""
        return await self.entitlement_of(account_id, await self._sub(self.db, account_id))

    async def entitlement_of(
        self, account_id: str, row: dict[str, Any] | None
    ) -> PlanConfig | None:
        """`entitlement` from a subscription row the caller read already (joined into another
        query; ``row`` needs status, plan_id, period_end and None when there is none)."""
        if row is None:
            return None
        now = self._now()
        plan = self._entitled(row, now)
        if plan is None:
            await self._renew(account_id, now)
        return plan

    async def subscription(self, account_id: str) -> dict[str, Any]:
        """``{"subscription": ... | None, "invoice": the open invoice | None}``."""
        now = self._now()
        await self._renew(account_id, now)
        row = await self._sub(self.db, account_id)
        invoice = await self._open_invoice(self.db, account_id)
        return {
            "subscription": self.subscription_json(row, now) if row else None,
            "invoice": invoice_json(invoice) if invoice else None,
        }

    # -- invoices ---------------------------------------------------------------------------

    async def _new_invoice(
        self,
        tx: Tx,
        account_id: str,
        plan: PlanConfig,
        start: float,
        now: float,
        *,
        kind: str = "period",
        end: float | None = None,
        amount_cents: int | None = None,
    ) -> dict[str, Any]:
        """An open invoice: by default for one period of ``plan`` from ``start`` at its price;
        an upgrade passes its own ``end`` and ``amount_cents``."""
        row = {
            "id": secrets.token_urlsafe(12),
            "account_id": account_id,
            "plan_id": plan.id,
            "amount_cents": plan.price_cents if amount_cents is None else amount_cents,
            "currency": plan.currency,
            "status": "open",
            "period_start": start,
            "period_end": start + plan.period_days * DAY if end is None else end,
            "provider": self.provider.name,
            "reference": None,
            "created_at": now,
            "paid_at": None,
            "kind": kind,
        }
        await tx.execute(
            f"INSERT INTO invoices({_INVOICE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            tuple(row.values()),
        )
        return row

    async def _announce(self, invoice: dict[str, Any]) -> dict[str, Any]:
        """After commit: count the invoice and tell the provider."""
        self.control.metrics.inc("control_invoices", "created")
        log.info(
            "event=invoice_created invoice=%s account=%s plan=%s amount=%d",
            invoice["id"],
            invoice["account_id"],
            invoice["plan_id"],
            invoice["amount_cents"],
        )
        try:
            ref = await self.provider.create_invoice(dict(invoice))
        except Exception:
            log.exception(
                "event=provider_failed provider=%s invoice=%s", self.provider.name, invoice["id"]
            )
            ref = None
        if ref:
            await self.db.execute(
                "UPDATE invoices SET reference = ? WHERE id = ? AND reference IS NULL",
                (str(ref)[:200], invoice["id"]),
            )
            invoice = {**invoice, "reference": str(ref)[:200]}
        return invoice

    async def _void_open(self, tx: Tx, account_id: str, now: float, kind: str | None = None) -> int:
        """Void the account's open invoices (of ``kind``, if given)."""
        sql = "UPDATE invoices SET status = 'void' WHERE account_id = ? AND status = 'open'"
        params: tuple[Any, ...] = (account_id,)
        if kind is not None:
            sql += " AND kind = ?"
            params = (account_id, kind)
        n = await tx.execute(sql, params)
        if n:
            self.control.metrics.inc("control_invoices", "void", n=n)
        return n

    async def _renew(self, account_id: str, now: float) -> None:
        """The renewal invoice of an active subscription whose period is over, if not made yet."""
        row = await self._sub(self.db, account_id)
        if (
            row is None
            or row["status"] != "active"
            or row["cancel_at_period_end"]
            or row["period_end"] is None
            or now < row["period_end"]
        ):
            return
        invoice = None
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE accounts SET version = version + 1 WHERE id = ?", (account_id,)
            )
            row = await self._sub(tx, account_id)
            if (
                row is None
                or row["status"] != "active"
                or row["cancel_at_period_end"]
                or row["period_end"] is None
                or now < row["period_end"]
            ):
                return
            # An unpaid upgrade was for the period that is now over: it can buy nothing more.
            await self._void_open(tx, account_id, now, "upgrade")
            if await self._open_invoice(tx, account_id, "period") is not None:
                return
            plan = self.plans.get(row["next_plan_id"] or row["plan_id"])
            if plan is None:  # the plan was removed from the configuration
                log.warning("event=renewal_skipped account=%s plan=%s", account_id, row["plan_id"])
                return
            invoice = await self._new_invoice(tx, account_id, plan, float(row["period_end"]), now)
        await self._announce(invoice)

    async def mark_paid(self, invoice_id: str, reference: str = "") -> dict[str, Any]:
        """Record an open invoice as paid and activate or extend its subscription (a period
        invoice) or switch it to the new plan (an upgrade invoice); returns the invoice.
        NotFound for an unknown id, Conflict when it is not open or no longer applies."""
        inv = await self.db.fetchone("SELECT account_id FROM invoices WHERE id = ?", (invoice_id,))
        if inv is None:
            raise NotFound("no such invoice")
        account_id = inv["account_id"]
        now = self._now()
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE accounts SET version = version + 1 WHERE id = ?", (account_id,)
            )
            row = await tx.fetchone(
                f"SELECT {_INVOICE_COLS} FROM invoices WHERE id = ?", (invoice_id,)
            )
            if row is None:
                raise NotFound("no such invoice")
            if row["status"] != "open":
                raise Conflict(f"the invoice is {row['status']}, not open")
            sub = await self._sub(tx, account_id)
            plan = self.plans.get(row["plan_id"])
            if sub is None or plan is None:
                raise Conflict("the invoice no longer belongs to a subscription")
            if row["kind"] == "upgrade":
                end = await self._pay_upgrade(tx, row, sub, plan, reference, now)
            else:
                end = await self._pay_period(tx, row, sub, plan, reference, now)
            paid = await tx.fetchone(
                f"SELECT {_INVOICE_COLS} FROM invoices WHERE id = ?", (invoice_id,)
            )
        assert paid is not None
        self.control.metrics.inc("control_invoices", "paid")
        log.info(
            "event=invoice_paid invoice=%s kind=%s account=%s plan=%s period_end=%.0f",
            invoice_id,
            row["kind"],
            account_id,
            plan.id,
            end,
        )
        return invoice_json(paid)

    @staticmethod
    async def _pay_period(
        tx: Tx,
        row: dict[str, Any],
        sub: dict[str, Any],
        plan: PlanConfig,
        reference: str,
        now: float,
    ) -> float:
        """Pay a period invoice (in ``mark_paid``'s transaction): the subscription becomes
        active for the period it buys; returns that period's end."""
        period = plan.period_days * DAY
        if sub["status"] == "pending":
            start = now
        elif sub["status"] == "active" and sub["period_end"] is not None:
            # A renewal buys the period it invoiced, from the previous end; only when
            # that period is already over too does it buy one from now.
            start = float(sub["period_end"])
            if now >= start + period:
                start = now
        else:
            raise Conflict("the invoice no longer belongs to a subscription")
        end = start + period
        await tx.execute(
            "UPDATE invoices SET status = 'paid', paid_at = ?, reference = ?,"
            " period_start = ?, period_end = ? WHERE id = ?",
            (now, reference or row["reference"], start, end, row["id"]),
        )
        await tx.execute(
            "UPDATE subscriptions SET status = 'active', plan_id = ?, period_start = ?,"
            " period_end = ?, cancel_at_period_end = 0, next_plan_id = NULL, updated_at = ?"
            " WHERE account_id = ?",
            (plan.id, start, end, now, row["account_id"]),
        )
        return end

    @staticmethod
    async def _pay_upgrade(
        tx: Tx,
        row: dict[str, Any],
        sub: dict[str, Any],
        plan: PlanConfig,
        reference: str,
        now: float,
    ) -> float:
        """Pay an upgrade invoice (in ``mark_paid``'s transaction): the subscription switches
        to its plan for the rest of the period it was made for; returns that period's end."""
        if sub["status"] != "active" or sub["period_end"] is None:
            raise Conflict("the invoice no longer belongs to a subscription")
        end = float(sub["period_end"])
        if now >= end or end != float(row["period_end"]):
            raise Conflict("the period this upgrade was for is over; it can no longer be paid")
        await tx.execute(
            "UPDATE invoices SET status = 'paid', paid_at = ?, reference = ? WHERE id = ?",
            (now, reference or row["reference"], row["id"]),
        )
        await tx.execute(
            "UPDATE subscriptions SET plan_id = ?, next_plan_id = NULL, updated_at = ?"
            " WHERE account_id = ?",
            (plan.id, now, row["account_id"]),
        )
        return end

    async def void(self, invoice_id: str) -> dict[str, Any]:
        """Void an open invoice. For a period invoice the subscription waiting on it (pending,
        or lapsed awaiting renewal) ends; an upgrade invoice just goes (the plan stays)."""
        inv = await self.db.fetchone("SELECT account_id FROM invoices WHERE id = ?", (invoice_id,))
        if inv is None:
            raise NotFound("no such invoice")
        account_id = inv["account_id"]
        now = self._now()
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE accounts SET version = version + 1 WHERE id = ?", (account_id,)
            )
            row = await tx.fetchone("SELECT status, kind FROM invoices WHERE id = ?", (invoice_id,))
            if row is None:
                raise NotFound("no such invoice")
            if row["status"] != "open":
                raise Conflict(f"the invoice is {row['status']}, not open")
            await tx.execute("UPDATE invoices SET status = 'void' WHERE id = ?", (invoice_id,))
            sub = await self._sub(tx, account_id)
            if (
                row["kind"] == "period"
                and sub is not None
                and (
                    sub["status"] == "pending"
                    or (sub["period_end"] is not None and now >= sub["period_end"])
                )
            ):
                await tx.execute(
                    "UPDATE subscriptions SET status = 'canceled', cancel_at_period_end = 1,"
                    " next_plan_id = NULL, updated_at = ? WHERE account_id = ?",
                    (now, account_id),
                )
            voided = await tx.fetchone(
                f"SELECT {_INVOICE_COLS} FROM invoices WHERE id = ?", (invoice_id,)
            )
        assert voided is not None
        self.control.metrics.inc("control_invoices", "void")
        log.info("event=invoice_void invoice=%s account=%s", invoice_id, account_id)
        return invoice_json(voided)

    async def invoices(
        self,
        *,
        account_id: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[list[dict[str, Any]], int]:
        """Invoices, newest first, optionally of one account and/or one status; and the total."""
        where, params = [], []
        if account_id is not None:
            await self._renew(account_id, self._now())
            where.append("account_id = ?")
            params.append(account_id)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = await self.db.fetchone(f"SELECT COUNT(*) AS n FROM invoices{clause}", params)
        rows = await self.db.fetchall(
            f"SELECT {_INVOICE_COLS} FROM invoices{clause}"
            " ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [invoice_json(r) for r in rows], int(total["n"]) if total else 0

    # -- changes ----------------------------------------------------------------------------

    async def subscribe(self, account_id: str, plan_id: str) -> dict[str, Any]:
        """A new pending subscription and its first invoice; Conflict while one is live."""
        plan = self.plan(plan_id)
        now = self._now()
        try:
            async with self.db.transaction() as tx:
                await tx.execute(
                    "UPDATE accounts SET version = version + 1 WHERE id = ?", (account_id,)
                )
                sub = await self._sub(tx, account_id)
                if self._live(sub, now):
                    raise Conflict("the account already has a subscription; change it with PUT")
                await self._void_open(tx, account_id, now)
                await tx.execute("DELETE FROM subscriptions WHERE account_id = ?", (account_id,))
                await tx.execute(
                    f"INSERT INTO subscriptions({_SUB_COLS}) VALUES (?, ?, 'pending', NULL, NULL,"
                    " 0, NULL, ?)",
                    (account_id, plan.id, now),
                )
                invoice = await self._new_invoice(tx, account_id, plan, now, now)
                row = await self._sub(tx, account_id)
        except IntegrityError:
            raise Conflict("the account already has a subscription; change it with PUT") from None
        assert row is not None
        invoice = await self._announce(invoice)
        log.info("event=subscribed account=%s plan=%s", account_id, plan.id)
        return {"subscription": self.subscription_json(row, now), "invoice": invoice_json(invoice)}

    @staticmethod
    def _is_upgrade(current: PlanConfig | None, plan: PlanConfig) -> bool:
        """Whether moving from ``current`` to ``plan`` is charged now (prorated) rather than
        from the next period: a higher price in the same currency. A subscription whose plan
        was removed from the configuration (``current`` None) entitles to nothing, so any
        other plan is an upgrade from a price of 0."""
        if current is None:
            return True
        return plan.currency == current.currency and plan.price_cents > current.price_cents

    async def change_plan(self, account_id: str, plan_id: str) -> dict[str, Any]:
        """Upgrade once its prorated invoice is paid, downgrade at the next period (see the
        module docstring)."""
        plan = self.plan(plan_id)
        now = self._now()
        invoice = None
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE accounts SET version = version + 1 WHERE id = ?", (account_id,)
            )
            sub = await self._sub(tx, account_id)
            if not self._live(sub, now):
                raise NotFound("no subscription to change; subscribe with POST")
            assert sub is not None
            current = self.plans.get(sub["plan_id"])
            if sub["status"] == "pending":
                if sub["plan_id"] != plan.id:
                    await self._void_open(tx, account_id, now)
                    invoice = await self._new_invoice(tx, account_id, plan, now, now)
                    await tx.execute(
                        "UPDATE subscriptions SET plan_id = ?, updated_at = ? WHERE account_id = ?",
                        (plan.id, now, account_id),
                    )
            else:
                # Paid up: this choice replaces any earlier pending one (an unpaid upgrade's
                # invoice is voided, a scheduled downgrade dropped) and resumes a
                # subscription canceled at period end.
                await self._void_open(tx, account_id, now, "upgrade")
                next_plan_id = None
                if plan.id == sub["plan_id"]:
                    pass  # keep the current plan
                elif self._is_upgrade(current, plan):
                    # Upgrade: an invoice for the rest of the period; the plan changes once
                    # it is paid (mark_paid), entitlement stays on the current plan until then.
                    end = float(sub["period_end"])
                    start = float(sub["period_start"] if sub["period_start"] is not None else now)
                    amount = prorated_cents(
                        plan.price_cents - (current.price_cents if current else 0), start, end, now
                    )
                    invoice = await self._new_invoice(
                        tx, account_id, plan, now, now, kind="upgrade", end=end, amount_cents=amount
                    )
                else:
                    # Downgrade (or another currency): from the next period.
                    next_plan_id = plan.id
                await tx.execute(
                    "UPDATE subscriptions SET status = 'active', cancel_at_period_end = 0,"
                    " next_plan_id = ?, updated_at = ? WHERE account_id = ?",
                    (next_plan_id, now, account_id),
                )
            row = await self._sub(tx, account_id)
        assert row is not None
        if invoice is not None:
            invoice = await self._announce(invoice)
        else:
            invoice = await self._open_invoice(self.db, account_id)
        log.info(
            "event=plan_changed account=%s plan=%s next_plan=%s upgrade_invoice=%s",
            account_id,
            row["plan_id"],
            row["next_plan_id"],
            invoice["id"] if invoice is not None and invoice["kind"] == "upgrade" else "-",
        )
        return {
            "subscription": self.subscription_json(row, now),
            "invoice": invoice_json(invoice) if invoice else None,
        }

    async def cancel(self, account_id: str) -> None:
        """Cancel at period end; a pending subscription ends now. NotFound without one."""
        now = self._now()
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE accounts SET version = version + 1 WHERE id = ?", (account_id,)
            )
            sub = await self._sub(tx, account_id)
            if sub is None:
                raise NotFound("no subscription")
            if sub["status"] == "canceled":
                return
            await self._void_open(tx, account_id, now)
            await tx.execute(
                "UPDATE subscriptions SET status = 'canceled', cancel_at_period_end = 1,"
                " next_plan_id = NULL, updated_at = ? WHERE account_id = ?",
                (now, account_id),
            )
        log.info("event=subscription_canceled account=%s", account_id)
