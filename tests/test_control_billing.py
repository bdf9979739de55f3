"""Plans, subscriptions and invoices over HTTP on both backends, driven by a fake clock:
pending -> paid -> active -> canceled -> over; upgrades once their prorated invoice is paid,
downgrades at the next period; renewal invoices; administration of invoices (listing,
paying, voiding)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control.config import DEFAULT_PLANS

DAY = 86400.0
PERIOD = 30 * DAY
# Sessions outlive the billing periods these tests cross (the default is 30 days).
LONG_SESSIONS = {"ttl": "365d"}


async def entitled(rc: Any, account_id: str) -> str | None:
    plan = await rc.control.billing.entitlement(account_id)
    return None if plan is None else str(plan.id)


async def pay(rc: Any, admin: Any, invoice_id: str, reference: str | None = None) -> Any:
    body = None if reference is None else {"reference": reference}
    return await rc.api.post(f"/v1/admin/invoices/{invoice_id}/paid", json=body, token=admin.token)


async def test_plans_are_public(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    r = await rc.api.get("/v1/plans")
    assert r.status == 200
    assert r.body["items"][0] == {
        "id": "basic",
        "name": "Basic",
        "max_streams": 1,
        "max_height": 480,
        "price_cents": 799,
        "currency": "USD",
        "period_days": 30,
    }
    assert [p["id"] for p in r.body["items"]] == [p.id for p in DEFAULT_PLANS]


async def test_configured_plans_are_offered(start_control: Any) -> None:
    plans = [
        {"id": "mobile", "name": "Mobile", "max_streams": 1, "max_height": 480,
         "price_cents": 300, "currency": "EUR", "period_days": 7},
    ]  # fmt: skip
    rc = await start_control(sessions=LONG_SESSIONS, plans=plans)
    r = await rc.api.get("/v1/plans")
    assert r.body == {"items": plans}
    user = await rc.signup()
    r = await rc.api.post("/v1/subscription", json={"plan_id": "standard"}, token=user.token)
    assert r.status == 400
    assert "plan_id" in r.body["error"]["details"]["fields"]
    r = await rc.api.post("/v1/subscription", json={"plan_id": "mobile"}, token=user.token)
    assert r.status == 201
    assert (r.body["invoice"]["amount_cents"], r.body["invoice"]["currency"]) == (300, "EUR")
    assert r.body["invoice"]["period_end"] - r.body["invoice"]["period_start"] == 7 * DAY


async def test_subscription_lifecycle(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.signup()
    t = user.token
    r = await rc.api.get("/v1/subscription", token=t)
    assert r.body == {"subscription": None, "invoice": None}
    assert await entitled(rc, user.account_id) is None

    # Subscribe: pending, with an open invoice; no entitlement yet.
    t0 = rc.clock.now
    r = await rc.api.post("/v1/subscription", json={"plan_id": "standard"}, token=t)
    assert r.status == 201, r
    sub, invoice = r.body["subscription"], r.body["invoice"]
    assert sub["status"] == "pending"
    assert (sub["plan_id"], sub["period_end"], sub["entitled"]) == ("standard", None, False)
    assert sub["plan"]["max_streams"] == 2
    assert invoice["status"] == "open"
    assert (invoice["amount_cents"], invoice["currency"], invoice["provider"]) == (
        1299,
        "USD",
        "manual",
    )
    assert invoice["account_id"] == user.account_id
    assert await entitled(rc, user.account_id) is None
    assert rc.counter("control_invoices", "created") == 1
    r = await rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=t)
    assert r.status == 409
    r = await rc.api.get("/v1/invoices", token=t)
    assert r.body == {"items": [invoice], "total": 1, "offset": 0, "limit": 20}

    # Only an administrator marks it paid.
    r = await rc.api.post(f"/v1/admin/invoices/{invoice['id']}/paid", token=t)
    assert r.status == 403
    rc.clock.advance(3600)
    r = await pay(rc, admin, invoice["id"], "bank transfer 42")
    assert r.status == 200, r
    assert r.body["status"] == "paid"
    assert r.body["reference"] == "bank transfer 42"
    assert r.body["paid_at"] == t0 + 3600
    assert rc.counter("control_invoices", "paid") == 1
    r = await rc.api.get("/v1/subscription", token=t)
    sub = r.body["subscription"]
    assert sub["status"] == "active"
    assert sub["period_start"] == t0 + 3600
    assert sub["period_end"] == t0 + 3600 + PERIOD
    assert sub["entitled"] is True
    assert r.body["invoice"] is None
    assert await entitled(rc, user.account_id) == "standard"
    assert (await pay(rc, admin, invoice["id"])).status == 409  # paid already
    r = await rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=t)
    assert r.status == 409

    # Cancel: entitled until the end of the paid period, not after; no renewal.
    r = await rc.api.delete("/v1/subscription", token=t)
    assert r.status == 204
    assert (await rc.api.delete("/v1/subscription", token=t)).status == 204  # idempotent
    sub = (await rc.api.get("/v1/subscription", token=t)).body["subscription"]
    assert (sub["status"], sub["cancel_at_period_end"], sub["entitled"]) == (
        "canceled",
        True,
        True,
    )
    end = sub["period_end"]
    rc.clock.now = end - 1
    assert await entitled(rc, user.account_id) == "standard"
    rc.clock.now = end
    assert await entitled(rc, user.account_id) is None
    r = await rc.api.get("/v1/subscription", token=t)
    assert r.body["subscription"]["entitled"] is False
    assert r.body["invoice"] is None
    assert (await rc.api.get("/v1/invoices", token=t)).body["total"] == 1

    # Over: a new subscription may start.
    r = await rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=t)
    assert r.status == 201, r
    assert r.body["subscription"]["status"] == "pending"
    assert r.body["subscription"]["cancel_at_period_end"] is False


async def test_renewal_invoice_after_the_period_ends(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.subscriber("basic")
    sub = (await rc.api.get("/v1/subscription", token=user.token)).body["subscription"]
    end = sub["period_end"]
    rc.clock.now = end - 10
    r = await rc.api.get("/v1/subscription", token=user.token)
    assert r.body["invoice"] is None
    rc.clock.now = end
    # The entitlement check notices the end and makes the renewal invoice (once).
    assert await entitled(rc, user.account_id) is None
    assert await entitled(rc, user.account_id) is None
    r = await rc.api.get("/v1/subscription", token=user.token)
    renewal = r.body["invoice"]
    assert renewal is not None
    assert (renewal["plan_id"], renewal["amount_cents"], renewal["status"]) == (
        "basic",
        799,
        "open",
    )
    assert (renewal["period_start"], renewal["period_end"]) == (end, end + PERIOD)
    assert r.body["subscription"]["status"] == "active"
    assert r.body["subscription"]["entitled"] is False
    r = await rc.api.get("/v1/invoices", token=user.token)
    assert r.body["total"] == 2
    assert r.body["items"][0]["id"] == renewal["id"]  # newest first
    assert rc.counter("control_invoices", "created") == 2

    # Paying it extends the period from the previous end.
    rc.clock.advance(DAY)
    r = await pay(rc, admin, renewal["id"])
    assert r.status == 200, r
    assert (r.body["period_start"], r.body["period_end"]) == (end, end + PERIOD)
    sub = (await rc.api.get("/v1/subscription", token=user.token)).body["subscription"]
    assert (sub["period_start"], sub["period_end"]) == (end, end + PERIOD)
    assert await entitled(rc, user.account_id) == "basic"

    # Paid ten days late: still the invoiced period, from the previous end.
    end2 = end + PERIOD
    rc.clock.now = end2 + 10 * DAY
    assert await entitled(rc, user.account_id) is None
    renewal = (await rc.api.get("/v1/subscription", token=user.token)).body["invoice"]
    r = await pay(rc, admin, renewal["id"])
    assert (r.body["period_start"], r.body["period_end"]) == (end2, end2 + PERIOD)
    assert await entitled(rc, user.account_id) == "basic"

    # Paid after the whole invoiced period is over: a period from the payment.
    rc.clock.now = end2 + PERIOD
    assert await entitled(rc, user.account_id) is None
    renewal = (await rc.api.get("/v1/subscription", token=user.token)).body["invoice"]
    assert renewal["period_start"] == end2 + PERIOD
    rc.clock.advance(PERIOD + 5 * DAY)
    r = await pay(rc, admin, renewal["id"])
    assert (r.body["period_start"], r.body["period_end"]) == (rc.clock.now, rc.clock.now + PERIOD)
    assert await entitled(rc, user.account_id) == "basic"


async def test_downgrade_applies_at_the_next_period(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.subscriber("premium")
    r = await rc.api.put("/v1/subscription", json={"plan_id": "basic"}, token=user.token)
    assert r.status == 200, r
    sub = r.body["subscription"]
    assert (sub["plan_id"], sub["next_plan_id"]) == ("premium", "basic")
    assert r.body["invoice"] is None
    assert await entitled(rc, user.account_id) == "premium"
    # Choosing the current plan again drops the downgrade; choosing it again sets it.
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=user.token)
    assert r.body["subscription"]["next_plan_id"] is None
    r = await rc.api.put("/v1/subscription", json={"plan_id": "standard"}, token=user.token)
    assert r.body["subscription"]["next_plan_id"] == "standard"

    rc.clock.now = sub["period_end"]
    r = await rc.api.get("/v1/subscription", token=user.token)
    renewal = r.body["invoice"]
    assert (renewal["plan_id"], renewal["amount_cents"]) == ("standard", 1299)
    assert r.body["subscription"]["plan_id"] == "premium"
    await pay(rc, admin, renewal["id"])
    sub = (await rc.api.get("/v1/subscription", token=user.token)).body["subscription"]
    assert (sub["plan_id"], sub["next_plan_id"]) == ("standard", None)
    assert await entitled(rc, user.account_id) == "standard"


async def test_an_upgrade_waits_for_its_prorated_invoice(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.subscriber("basic")
    before = (await rc.api.get("/v1/subscription", token=user.token)).body["subscription"]
    rc.clock.advance(10 * DAY)  # 20 of 30 days left
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=user.token)
    assert r.status == 200, r
    sub, invoice = r.body["subscription"], r.body["invoice"]
    # Nothing changes yet: still basic, same period, no downgrade or resumption pending.
    assert (sub["plan_id"], sub["next_plan_id"], sub["status"]) == ("basic", None, "active")
    assert (sub["period_start"], sub["period_end"]) == (
        before["period_start"],
        before["period_end"],
    )
    # (1799 - 799) x 20/30 = 666.67 -> 667 cents, for the rest of the period.
    assert (invoice["kind"], invoice["plan_id"], invoice["status"]) == (
        "upgrade",
        "premium",
        "open",
    )
    assert (invoice["amount_cents"], invoice["currency"]) == (667, "USD")
    assert (invoice["period_start"], invoice["period_end"]) == (rc.clock.now, sub["period_end"])
    assert await entitled(rc, user.account_id) == "basic"
    r = await rc.api.get("/v1/subscription", token=user.token)
    assert r.body["invoice"] == invoice
    assert r.body["subscription"]["plan"]["id"] == "basic"
    assert rc.counter("control_invoices", "created") == 2

    # Paid: premium for the rest of the paid period, which is not extended.
    rc.clock.advance(DAY)
    r = await pay(rc, admin, invoice["id"], "card 1")
    assert r.status == 200, r
    assert (r.body["status"], r.body["kind"], r.body["reference"]) == ("paid", "upgrade", "card 1")
    assert (r.body["period_start"], r.body["period_end"]) == (
        invoice["period_start"],
        invoice["period_end"],
    )
    sub = (await rc.api.get("/v1/subscription", token=user.token)).body["subscription"]
    assert (sub["plan_id"], sub["status"], sub["entitled"]) == ("premium", "active", True)
    assert (sub["period_start"], sub["period_end"]) == (
        before["period_start"],
        before["period_end"],
    )
    assert await entitled(rc, user.account_id) == "premium"
    assert (await pay(rc, admin, invoice["id"])).status == 409  # paid already

    # The renewal is at the new plan's price.
    rc.clock.now = sub["period_end"]
    renewal = (await rc.api.get("/v1/subscription", token=user.token)).body["invoice"]
    assert (renewal["kind"], renewal["plan_id"], renewal["amount_cents"]) == (
        "period",
        "premium",
        1799,
    )


async def test_a_downgrade_right_after_an_upgrade_does_not_keep_the_better_plan(
    start_control: Any,
) -> None:
    """The old hole: upgrade (free, at once), then schedule a downgrade: the better plan for
    the cheap price, every period. Now the upgrade is paid for its remainder only, and the
    downgrade applies from the next period as always."""
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.subscriber("basic")
    end = (await rc.api.get("/v1/subscription", token=user.token)).body["subscription"][
        "period_end"
    ]
    # Unpaid upgrade, then back to the current plan: nothing gained, the invoice is void.
    rc.clock.advance(1)  # (invoices list newest first)
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=user.token)
    upgrade = r.body["invoice"]
    assert upgrade["amount_cents"] == 1000  # (almost) the whole period is left
    r = await rc.api.put("/v1/subscription", json={"plan_id": "basic"}, token=user.token)
    assert r.status == 200
    assert r.body["invoice"] is None
    assert (r.body["subscription"]["plan_id"], r.body["subscription"]["next_plan_id"]) == (
        "basic",
        None,
    )
    assert await entitled(rc, user.account_id) == "basic"
    assert (await pay(rc, admin, upgrade["id"])).status == 409  # void

    # A paid upgrade, then a downgrade: premium until the end of the period, then basic.
    rc.clock.advance(1)
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=user.token)
    assert (await pay(rc, admin, r.body["invoice"]["id"])).status == 200
    r = await rc.api.put("/v1/subscription", json={"plan_id": "basic"}, token=user.token)
    assert (r.body["subscription"]["plan_id"], r.body["subscription"]["next_plan_id"]) == (
        "premium",
        "basic",
    )
    assert r.body["invoice"] is None
    assert await entitled(rc, user.account_id) == "premium"
    rc.clock.now = end
    renewal = (await rc.api.get("/v1/subscription", token=user.token)).body["invoice"]
    assert (renewal["kind"], renewal["plan_id"], renewal["amount_cents"]) == (
        "period",
        "basic",
        799,
    )
    assert (await pay(rc, admin, renewal["id"])).status == 200
    assert await entitled(rc, user.account_id) == "basic"
    r = await rc.api.get("/v1/invoices", token=user.token)
    assert [(i["kind"], i["plan_id"], i["amount_cents"], i["status"]) for i in r.body["items"]] == [
        ("period", "basic", 799, "paid"),
        ("upgrade", "premium", 1000, "paid"),
        ("upgrade", "premium", 1000, "void"),
        ("period", "basic", 799, "paid"),
    ]


async def test_a_second_upgrade_voids_the_first_and_an_upgrade_drops_a_downgrade(
    start_control: Any,
) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.subscriber("basic")
    rc.clock.advance(15 * DAY)  # half the period left
    r = await rc.api.put("/v1/subscription", json={"plan_id": "standard"}, token=user.token)
    first = r.body["invoice"]
    assert (first["plan_id"], first["amount_cents"]) == ("standard", 250)  # 500 x 1/2
    rc.clock.advance(1)
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=user.token)
    second = r.body["invoice"]
    assert (second["plan_id"], second["amount_cents"], second["kind"]) == (
        "premium",
        500,
        "upgrade",
    )
    assert second["id"] != first["id"]
    r = await rc.api.get("/v1/invoices", params={"limit": 2}, token=user.token)
    assert {i["id"]: i["status"] for i in r.body["items"]} == {
        first["id"]: "void",
        second["id"]: "open",
    }
    assert (await pay(rc, admin, first["id"])).status == 409
    assert await entitled(rc, user.account_id) == "basic"
    # A downgrade voids the unpaid upgrade too.
    other = await rc.subscriber("standard")
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=other.token)
    upgrade = r.body["invoice"]
    r = await rc.api.put("/v1/subscription", json={"plan_id": "basic"}, token=other.token)
    assert (r.body["subscription"]["next_plan_id"], r.body["invoice"]) == ("basic", None)
    assert (await pay(rc, admin, upgrade["id"])).status == 409
    # An upgrade after a scheduled downgrade cancels the downgrade (as soon as it is asked).
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=other.token)
    assert r.body["subscription"]["next_plan_id"] is None
    assert (r.body["subscription"]["plan_id"], r.body["invoice"]["plan_id"]) == (
        "standard",
        "premium",
    )
    assert await entitled(rc, other.account_id) == "standard"
    assert (await pay(rc, admin, second["id"])).status == 200
    assert await entitled(rc, user.account_id) == "premium"


async def test_voiding_an_upgrade_invoice_keeps_the_current_plan(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.subscriber("standard")
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=user.token)
    upgrade = r.body["invoice"]
    r = await rc.api.post(f"/v1/admin/invoices/{upgrade['id']}/void", token=admin.token)
    assert r.status == 200, r
    assert (r.body["status"], r.body["kind"]) == ("void", "upgrade")
    r = await rc.api.get("/v1/subscription", token=user.token)
    sub = r.body["subscription"]
    assert (sub["plan_id"], sub["status"], sub["cancel_at_period_end"], sub["entitled"]) == (
        "standard",
        "active",
        False,
        True,
    )
    assert r.body["invoice"] is None
    assert await entitled(rc, user.account_id) == "standard"
    assert (await pay(rc, admin, upgrade["id"])).status == 409
    # It renews as before.
    rc.clock.now = sub["period_end"]
    renewal = (await rc.api.get("/v1/subscription", token=user.token)).body["invoice"]
    assert (renewal["plan_id"], renewal["amount_cents"]) == ("standard", 1299)


async def test_an_unpaid_upgrade_lapses_with_its_period(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.subscriber("basic")
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=user.token)
    upgrade = r.body["invoice"]
    end = r.body["subscription"]["period_end"]
    rc.clock.now = end
    # The entitlement check makes the renewal, for the current plan, and voids the upgrade.
    assert await entitled(rc, user.account_id) is None
    r = await rc.api.get("/v1/subscription", token=user.token)
    renewal = r.body["invoice"]
    assert (renewal["kind"], renewal["plan_id"], renewal["amount_cents"]) == (
        "period",
        "basic",
        799,
    )
    r = await rc.api.get("/v1/invoices", token=user.token)
    statuses = {i["id"]: i["status"] for i in r.body["items"]}
    assert (statuses[renewal["id"]], statuses[upgrade["id"]], len(statuses)) == ("open", "void", 3)
    r = await pay(rc, admin, upgrade["id"])
    assert r.status == 409
    assert (await pay(rc, admin, renewal["id"])).status == 200
    assert await entitled(rc, user.account_id) == "basic"


async def test_an_upgrade_past_its_period_cannot_be_paid(start_control: Any) -> None:
    """Paid after its period ended but before anything read the subscription (no renewal
    made yet, so the invoice is still open): refused, the plan does not change."""
    rc = await start_control(sessions=LONG_SESSIONS)
    user = await rc.subscriber("basic")
    r = await rc.api.put("/v1/subscription", json={"plan_id": "standard"}, token=user.token)
    upgrade = r.body["invoice"]
    rc.clock.now = r.body["subscription"]["period_end"]
    from control.errors import Conflict

    with pytest.raises(Conflict, match="period"):
        await rc.control.billing.mark_paid(upgrade["id"])
    row = await rc.control.db.fetchone(
        "SELECT plan_id FROM subscriptions WHERE account_id = ?", (user.account_id,)
    )
    assert row["plan_id"] == "basic"


async def test_the_last_second_of_a_period_still_costs_a_cent(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    user = await rc.subscriber("basic")
    end = (await rc.api.get("/v1/subscription", token=user.token)).body["subscription"][
        "period_end"
    ]
    rc.clock.now = end - 1
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=user.token)
    assert (r.body["invoice"]["amount_cents"], r.body["invoice"]["period_end"]) == (1, end)


async def test_upgrading_a_canceled_subscription_resumes_it(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.subscriber("basic")
    assert (await rc.api.delete("/v1/subscription", token=user.token)).status == 204
    r = await rc.api.put("/v1/subscription", json={"plan_id": "standard"}, token=user.token)
    sub, upgrade = r.body["subscription"], r.body["invoice"]
    # Resumed at once (it renews again), upgraded only once paid.
    assert (sub["status"], sub["cancel_at_period_end"], sub["plan_id"]) == (
        "active",
        False,
        "basic",
    )
    assert (upgrade["kind"], upgrade["plan_id"]) == ("upgrade", "standard")
    assert (await pay(rc, admin, upgrade["id"])).status == 200
    rc.clock.now = sub["period_end"]
    renewal = (await rc.api.get("/v1/subscription", token=user.token)).body["invoice"]
    assert (renewal["plan_id"], renewal["amount_cents"]) == ("standard", 1299)


async def test_a_plan_in_another_currency_applies_from_the_next_period(
    start_control: Any,
) -> None:
    plans = [
        {"id": "small", "name": "Small", "max_streams": 1, "max_height": 480,
         "price_cents": 500, "currency": "USD", "period_days": 30},
        {"id": "large", "name": "Large", "max_streams": 4, "max_height": 2160,
         "price_cents": 1500, "currency": "USD", "period_days": 30},
        {"id": "euro", "name": "Euro", "max_streams": 4, "max_height": 2160,
         "price_cents": 900, "currency": "EUR", "period_days": 30},
    ]  # fmt: skip
    rc = await start_control(sessions=LONG_SESSIONS, plans=plans)
    user = await rc.subscriber("small")
    r = await rc.api.put("/v1/subscription", json={"plan_id": "euro"}, token=user.token)
    sub = r.body["subscription"]
    assert (sub["plan_id"], sub["next_plan_id"], r.body["invoice"]) == ("small", "euro", None)
    rc.clock.now = sub["period_end"]
    renewal = (await rc.api.get("/v1/subscription", token=user.token)).body["invoice"]
    assert (renewal["plan_id"], renewal["amount_cents"], renewal["currency"]) == (
        "euro",
        900,
        "EUR",
    )
    # Within one currency an upgrade is prorated.
    other = await rc.subscriber("small")
    r = await rc.api.put("/v1/subscription", json={"plan_id": "large"}, token=other.token)
    assert (r.body["invoice"]["amount_cents"], r.body["invoice"]["currency"]) == (1000, "USD")


async def test_concurrent_upgrades_leave_one_open_invoice(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    user = await rc.subscriber("basic")
    replies = await asyncio.gather(
        *(
            rc.api.put("/v1/subscription", json={"plan_id": plan}, token=user.token)
            for plan in ("standard", "premium") * 3
        )
    )
    assert all(r.status == 200 for r in replies), replies
    rows = await rc.control.db.fetchall(
        "SELECT kind FROM invoices WHERE account_id = ? AND status = 'open'", (user.account_id,)
    )
    assert [r["kind"] for r in rows] == ["upgrade"]


@pytest.mark.parametrize(
    ("diff", "start", "end", "now", "cents"),
    [
        (1000, 0.0, 30.0, 0.0, 1000),  # the whole period
        (1000, 0.0, 30.0, 10.0, 667),  # 666.67 rounds up
        (1000, 0.0, 30.0, 20.0, 333),  # 333.33 rounds down
        (1, 0.0, 2.0, 1.0, 1),  # 0.5 rounds half up
        (3, 0.0, 2.0, 1.0, 2),  # 1.5 rounds half up
        (5, 0.0, 4.0, 3.0, 1),  # 1.25 rounds down
        (1000, 0.0, 30.0, 29.999, 1),  # almost nothing left: at least 1 cent
        (1000, 0.0, 30.0, 30.0, 1),  # (nothing left: still 1 cent; never asked in practice)
        (1000, 0.0, 30.0, -5.0, 1000),  # a clock before the start: never more than the diff
        (1000, 5.0, 5.0, 5.0, 1000),  # a degenerate period counts as wholly left
        # Realistic float times: 1/3 of 30 days at 1_790_000_000 is still exactly 333.33.
        (1000, 1_790_000_000.0, 1_790_000_000.0 + 30 * DAY, 1_790_000_000.0 + 20 * DAY, 333),
        (1000, 1_790_000_000.0, 1_790_000_000.0 + 30 * DAY, 1_790_000_000.0 + 15 * DAY, 500),
    ],
)
def test_prorated_cents(diff: int, start: float, end: float, now: float, cents: int) -> None:
    from control.billing import prorated_cents

    assert prorated_cents(diff, start, end, now) == cents


def test_prorated_cents_needs_a_higher_price() -> None:
    from control.billing import prorated_cents

    for diff in (0, -1):
        with pytest.raises(ValueError):
            prorated_cents(diff, 0.0, 30.0, 10.0)


async def test_changing_the_plan_resumes_a_canceled_subscription(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    user = await rc.subscriber("standard")
    assert (await rc.api.delete("/v1/subscription", token=user.token)).status == 204
    r = await rc.api.put("/v1/subscription", json={"plan_id": "standard"}, token=user.token)
    sub = r.body["subscription"]
    assert (sub["status"], sub["cancel_at_period_end"]) == ("active", False)
    rc.clock.now = sub["period_end"]
    assert (await rc.api.get("/v1/subscription", token=user.token)).body["invoice"] is not None


async def test_pending_subscription_changes_and_cancellation(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.signup()
    t = user.token
    r = await rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=t)
    first = r.body["invoice"]
    r = await rc.api.put("/v1/subscription", json={"plan_id": "premium"}, token=t)
    assert r.status == 200
    assert r.body["subscription"]["status"] == "pending"
    second = r.body["invoice"]
    assert (second["plan_id"], second["amount_cents"], second["status"]) == (
        "premium",
        1799,
        "open",
    )
    assert second["id"] != first["id"]
    r = await rc.api.get("/v1/invoices", token=t)
    assert {i["id"]: i["status"] for i in r.body["items"]} == {
        first["id"]: "void",
        second["id"]: "open",
    }
    assert (await pay(rc, admin, first["id"])).status == 409  # void

    # Canceling a pending subscription ends it at once and voids its invoice.
    assert (await rc.api.delete("/v1/subscription", token=t)).status == 204
    r = await rc.api.get("/v1/subscription", token=t)
    assert r.body["subscription"]["status"] == "canceled"
    assert r.body["invoice"] is None
    assert (await pay(rc, admin, second["id"])).status == 409
    assert await entitled(rc, user.account_id) is None
    r = await rc.api.put("/v1/subscription", json={"plan_id": "basic"}, token=t)
    assert r.status == 404
    r = await rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=t)
    assert r.status == 201
    assert rc.counter("control_invoices", "void") == 2


async def test_voiding_invoices(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.signup()
    r = await rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=user.token)
    invoice = r.body["invoice"]
    path = f"/v1/admin/invoices/{invoice['id']}/void"
    assert (await rc.api.post(path, token=user.token)).status == 403
    r = await rc.api.post(path, token=admin.token)
    assert r.status == 200, r
    assert r.body["status"] == "void"
    assert (await rc.api.post(path, token=admin.token)).status == 409
    sub = (await rc.api.get("/v1/subscription", token=user.token)).body["subscription"]
    assert sub["status"] == "canceled"

    # Voiding a renewal invoice ends the lapsed subscription (no new renewal appears).
    other = await rc.subscriber("basic")
    end = (await rc.api.get("/v1/subscription", token=other.token)).body["subscription"][
        "period_end"
    ]
    rc.clock.now = end
    renewal = (await rc.api.get("/v1/subscription", token=other.token)).body["invoice"]
    r = await rc.api.post(f"/v1/admin/invoices/{renewal['id']}/void", token=admin.token)
    assert r.status == 200
    r = await rc.api.get("/v1/subscription", token=other.token)
    assert r.body["invoice"] is None
    assert r.body["subscription"]["status"] == "canceled"
    paid = await rc.api.get(
        "/v1/admin/invoices", params={"status": "paid", "account_id": other.account_id},
        token=admin.token,
    )  # fmt: skip
    paid_id = paid.body["items"][0]["id"]
    assert (
        await rc.api.post(f"/v1/admin/invoices/{paid_id}/void", token=admin.token)
    ).status == 409


async def test_unknown_and_malformed_invoice_ids(start_control: Any) -> None:
    from control.errors import NotFound

    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    for bad in ("unknown-invoice", "a" * 65, "bad.id", "%27%20OR%201%3D1"):
        for action in ("paid", "void"):
            r = await rc.api.post(f"/v1/admin/invoices/{bad}/{action}", token=admin.token)
            assert r.status == 404, (bad, action, r)
            assert r.body["error"]["code"] == "not_found"
    try:
        await rc.control.billing.mark_paid("unknown")
    except NotFound:
        pass
    else:
        raise AssertionError("mark_paid of an unknown invoice")


async def test_subscription_requests_without_a_subscription_or_session(
    start_control: Any,
) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    user = await rc.signup()
    assert (await rc.api.delete("/v1/subscription", token=user.token)).status == 404
    r = await rc.api.put("/v1/subscription", json={"plan_id": "basic"}, token=user.token)
    assert r.status == 404
    for method, path in (
        ("GET", "/v1/subscription"),
        ("POST", "/v1/subscription"),
        ("PUT", "/v1/subscription"),
        ("DELETE", "/v1/subscription"),
        ("GET", "/v1/invoices"),
        ("GET", "/v1/admin/invoices"),
        ("POST", "/v1/admin/invoices/x/paid"),
        ("POST", "/v1/admin/invoices/x/void"),
    ):
        r = await rc.api.call(method, path, json={"plan_id": "basic"})
        assert r.status == 401, (method, path, r)
    for method, path in (
        ("GET", "/v1/admin/invoices"),
        ("POST", "/v1/admin/invoices/x/paid"),
        ("POST", "/v1/admin/invoices/x/void"),
    ):
        r = await rc.api.call(method, path, token=user.token)
        assert r.status == 403, (method, path, r)


async def test_bad_subscription_bodies(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.signup()
    for body, field in (
        ({}, "plan_id"),
        ({"plan_id": 3}, "plan_id"),
        ({"plan_id": "gold"}, "plan_id"),
        ({"plan_id": "x" * 10_000}, "plan_id"),
        ({"plan_id": "basic'; DROP TABLE invoices; --"}, "plan_id"),
        ({"plan_id": "basic", "coupon": "FREE"}, "coupon"),
    ):
        for method in ("POST", "PUT"):
            r = await rc.api.call(method, "/v1/subscription", json=body, token=user.token)
            assert r.status == 400, (method, body, r)
            assert field in r.body["error"]["details"]["fields"], r
    r = await rc.api.post(
        "/v1/subscription", data=b"plan_id=basic", headers={"Content-Type": "text/plain"},
        token=user.token,
    )  # fmt: skip
    assert r.status == 415
    r = await rc.api.post(
        "/v1/subscription", data=b"{", headers={"Content-Type": "application/json"},
        token=user.token,
    )  # fmt: skip
    assert r.status == 400
    r = await rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=user.token)
    invoice = r.body["invoice"]
    path = f"/v1/admin/invoices/{invoice['id']}/paid"
    for body in ({"reference": 5}, {"reference": "x" * 201}, {"ref": "x"}, {"reference": "\x00"}):
        r = await rc.api.post(path, json=body, token=admin.token)
        assert r.status == 400, (body, r)
    r = await rc.api.post(
        path, data=b"ref", headers={"Content-Type": "text/plain"}, token=admin.token
    )
    assert r.status == 415
    assert (await pay(rc, admin, invoice["id"], "réf 🧾")).body["reference"] == "réf 🧾"


async def test_admin_invoice_listing(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS, rate_limits={"enabled": False})
    admin = await rc.admin()
    users = [await rc.signup() for _ in range(4)]
    invoices = []
    for i, u in enumerate(users):
        rc.clock.advance(1)
        r = await rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=u.token)
        invoices.append(r.body["invoice"])
        if i % 2:
            await pay(rc, admin, r.body["invoice"]["id"])
    r = await rc.api.get("/v1/admin/invoices", token=admin.token)
    assert r.status == 200
    assert r.body["total"] == 4
    assert [i["id"] for i in r.body["items"]] == [i["id"] for i in reversed(invoices)]
    r = await rc.api.get("/v1/admin/invoices", params={"status": "paid"}, token=admin.token)
    assert {i["id"] for i in r.body["items"]} == {invoices[1]["id"], invoices[3]["id"]}
    assert all(i["status"] == "paid" for i in r.body["items"])
    r = await rc.api.get("/v1/admin/invoices", params={"status": "open"}, token=admin.token)
    assert r.body["total"] == 2
    r = await rc.api.get("/v1/admin/invoices", params={"status": "void"}, token=admin.token)
    assert r.body == {"items": [], "total": 0, "offset": 0, "limit": 20}

    # Pagination: pages of 3 cover everything once, in order.
    seen = []
    for offset in (0, 3, 6):
        r = await rc.api.get(
            "/v1/admin/invoices", params={"offset": offset, "limit": 3}, token=admin.token
        )
        assert (r.body["total"], r.body["offset"], r.body["limit"]) == (4, offset, 3)
        seen += [i["id"] for i in r.body["items"]]
    assert seen == [i["id"] for i in reversed(invoices)]
    r = await rc.api.get(
        "/v1/admin/invoices", params={"account_id": users[0].account_id}, token=admin.token
    )
    assert [i["id"] for i in r.body["items"]] == [invoices[0]["id"]]

    # A user sees only their own.
    r = await rc.api.get("/v1/invoices", token=users[1].token)
    assert [i["id"] for i in r.body["items"]] == [invoices[1]["id"]]

    for params in (
        {"status": "unpaid"},
        {"limit": 0},
        {"limit": 101},
        {"offset": -1},
        {"limit": "ten"},
        {"sort": "id"},
    ):
        r = await rc.api.get("/v1/admin/invoices", params=params, token=admin.token)
        assert r.status == 400, (params, r)
    r = await rc.api.get("/v1/invoices", params={"limit": 0}, token=users[0].token)
    assert r.status == 400


async def test_concurrent_subscribes_make_one_subscription(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    user = await rc.signup()
    replies = await asyncio.gather(
        *(
            rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=user.token)
            for _ in range(6)
        )
    )
    assert sorted(r.status for r in replies) == [201, 409, 409, 409, 409, 409]
    r = await rc.api.get("/v1/invoices", token=user.token)
    assert r.body["total"] == 1


async def test_concurrent_payments_of_one_invoice_extend_once(start_control: Any) -> None:
    rc = await start_control(sessions=LONG_SESSIONS)
    admin = await rc.admin()
    user = await rc.signup()
    r = await rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=user.token)
    invoice_id = r.body["invoice"]["id"]
    replies = await asyncio.gather(*(pay(rc, admin, invoice_id) for _ in range(5)))
    assert sorted(r.status for r in replies) == [200, 409, 409, 409, 409]
    sub = (await rc.api.get("/v1/subscription", token=user.token)).body["subscription"]
    assert sub["period_end"] == rc.clock.now + PERIOD


async def test_a_custom_payment_provider_sees_new_invoices(start_control: Any) -> None:
    from control.billing import BillingStore

    class Provider:
        name = "acme"

        def __init__(self) -> None:
            self.seen: list[str] = []

        async def create_invoice(self, invoice: dict[str, Any]) -> str | None:
            self.seen.append(invoice["id"])
            return f"acme-{len(self.seen)}"

    rc = await start_control(sessions=LONG_SESSIONS)
    provider = Provider()
    rc.control.billing = BillingStore(rc.control, provider)
    user = await rc.signup()
    r = await rc.api.post("/v1/subscription", json={"plan_id": "basic"}, token=user.token)
    invoice = r.body["invoice"]
    assert (invoice["provider"], invoice["reference"]) == ("acme", "acme-1")
    assert provider.seen == [invoice["id"]]
    paid = await rc.control.billing.mark_paid(invoice["id"])
    assert paid["reference"] == "acme-1"  # kept when the payment names none
