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
* ``PUT /v1/subscription {plan_id}``: an upgrade (a higher price) takes effect at once, and
  the next renewal invoice is at the new price; there is no prorated charge for the rest of
  the current period (documented simplification: the customer gets the better plan for the
  remainder of a period already paid). A downgrade (same or lower price) is stored as
  ``next_plan_id`` and applies from the next period (the renewal invoice is for it). Choosing
  the current plan again drops a pending downgrade. While pending, a change replaces the open
  invoice. Changing the plan of a subscription canceled at period end resumes it.
* ``DELETE /v1/subscription`` cancels at period end (``status = canceled``,
  ``cancel_at_period_end = 1``): the plan stays usable until ``period_end``, no renewal is
  made. A pending subscription ends at once (its invoice is voided).
* A subscription that has ended (canceled and past its period, or lapsed: past its period
  with the renewal unpaid) may be replaced by a new ``POST``.

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
import secrets
from typing import Any, Protocol

from .config import PlanConfig
from .db import IntegrityError, Tx
from .errors import BadRequest, Conflict, NotFound

log = logging.getLogger("control")

DAY = 86400.0
SUBSCRIPTION_STATUSES = ("pending", "active", "canceled")
INVOICE_STATUSES = ("open", "paid", "void")

_INVOICE_COLS = (
    "id, account_id, plan_id, amount_cents, currency, status, period_start, period_end, "
    "provider, reference, created_at, paid_at"
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
    }


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
    async def _open_invoice(tx: Any, account_id: str) -> dict[str, Any] | None:
        row: dict[str, Any] | None = await tx.fetchone(
            f"SELECT {_INVOICE_COLS} FROM invoices WHERE account_id = ? AND status = 'open'"
            " ORDER BY created_at DESC, id LIMIT 1",
            (account_id,),
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
        now = self._now()
        row = await self._sub(self.db, account_id)
        if row is None:
            return None
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
        self, tx: Tx, account_id: str, plan: PlanConfig, start: float, now: float
    ) -> dict[str, Any]:
        row = {
            "id": secrets.token_urlsafe(12),
            "account_id": account_id,
            "plan_id": plan.id,
            "amount_cents": plan.price_cents,
            "currency": plan.currency,
            "status": "open",
            "period_start": start,
            "period_end": start + plan.period_days * DAY,
            "provider": self.provider.name,
            "reference": None,
            "created_at": now,
            "paid_at": None,
        }
        await tx.execute(
            f"INSERT INTO invoices({_INVOICE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    async def _void_open(self, tx: Tx, account_id: str, now: float) -> int:
        n = await tx.execute(
            "UPDATE invoices SET status = 'void' WHERE account_id = ? AND status = 'open'",
            (account_id,),
        )
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
                or await self._open_invoice(tx, account_id) is not None
            ):
                return
            plan = self.plans.get(row["next_plan_id"] or row["plan_id"])
            if plan is None:  # the plan was removed from the configuration
                log.warning("event=renewal_skipped account=%s plan=%s", account_id, row["plan_id"])
                return
            invoice = await self._new_invoice(tx, account_id, plan, float(row["period_end"]), now)
        await self._announce(invoice)

    async def mark_paid(self, invoice_id: str, reference: str = "") -> dict[str, Any]:
        """Record an open invoice as paid and activate or extend its subscription; returns the
        invoice. NotFound for an unknown id, Conflict when it is not open."""
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
                (now, reference or row["reference"], start, end, invoice_id),
            )
            await tx.execute(
                "UPDATE subscriptions SET status = 'active', plan_id = ?, period_start = ?,"
                " period_end = ?, cancel_at_period_end = 0, next_plan_id = NULL, updated_at = ?"
                " WHERE account_id = ?",
                (plan.id, start, end, now, account_id),
            )
            paid = await tx.fetchone(
                f"SELECT {_INVOICE_COLS} FROM invoices WHERE id = ?", (invoice_id,)
            )
        assert paid is not None
        self.control.metrics.inc("control_invoices", "paid")
        log.info(
            "event=invoice_paid invoice=%s account=%s plan=%s period_end=%.0f",
            invoice_id,
            account_id,
            plan.id,
            end,
        )
        return invoice_json(paid)

    async def void(self, invoice_id: str) -> dict[str, Any]:
        """Void an open invoice; the subscription waiting on it (pending, or lapsed awaiting
        renewal) ends."""
        inv = await self.db.fetchone("SELECT account_id FROM invoices WHERE id = ?", (invoice_id,))
        if inv is None:
            raise NotFound("no such invoice")
        account_id = inv["account_id"]
        now = self._now()
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE accounts SET version = version + 1 WHERE id = ?", (account_id,)
            )
            row = await tx.fetchone("SELECT status FROM invoices WHERE id = ?", (invoice_id,))
            if row is None:
                raise NotFound("no such invoice")
            if row["status"] != "open":
                raise Conflict(f"the invoice is {row['status']}, not open")
            await tx.execute("UPDATE invoices SET status = 'void' WHERE id = ?", (invoice_id,))
            sub = await self._sub(tx, account_id)
            if sub is not None and (
                sub["status"] == "pending"
                or (sub["period_end"] is not None and now >= sub["period_end"])
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

    async def change_plan(self, account_id: str, plan_id: str) -> dict[str, Any]:
        """Upgrade now, downgrade at the next period (see the module docstring)."""
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
            elif plan.id == sub["plan_id"]:
                await tx.execute(
                    "UPDATE subscriptions SET status = 'active', cancel_at_period_end = 0,"
                    " next_plan_id = NULL, updated_at = ? WHERE account_id = ?",
                    (now, account_id),
                )
            elif current is None or plan.price_cents > current.price_cents:
                # Upgrade: at once; the next renewal invoice is at the new price.
                await tx.execute(
                    "UPDATE subscriptions SET status = 'active', cancel_at_period_end = 0,"
                    " plan_id = ?, next_plan_id = NULL, updated_at = ? WHERE account_id = ?",
                    (plan.id, now, account_id),
                )
            else:
                # Downgrade: from the next period.
                await tx.execute(
                    "UPDATE subscriptions SET status = 'active', cancel_at_period_end = 0,"
                    " next_plan_id = ?, updated_at = ? WHERE account_id = ?",
                    (plan.id, now, account_id),
                )
            row = await self._sub(tx, account_id)
        assert row is not None
        if invoice is not None:
            invoice = await self._announce(invoice)
        else:
            invoice = await self._open_invoice(self.db, account_id)
        log.info(
            "event=plan_changed account=%s plan=%s next_plan=%s",
            account_id,
            row["plan_id"],
            row["next_plan_id"],
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
