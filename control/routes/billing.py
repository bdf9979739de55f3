"""HTTP routes: plans, the account's subscription and invoices, and invoice administration.

Thin handlers over control/billing.py (its docstring describes the subscription life).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..app import admin_of, control_of, read_body, session_of
from ..billing import (
    INVOICE_KINDS,
    INVOICE_STATUSES,
    SUBSCRIPTION_STATUSES,
    BillingStore,
    plan_json,
)
from ..fields import Fields, page, page_params
from ..openapi import PAGE_PARAMS, error_responses, json_body, json_response, page_of
from ..responses import respond
from .accounts import path_id

routes = web.RouteTableDef()


def _store(request: web.Request) -> BillingStore:
    store: BillingStore = control_of(request).billing
    return store


def _plan_id(f: Fields) -> Any:
    return f.text("plan_id", max_len=32)


@routes.get("/v1/plans")
async def list_plans(request: web.Request) -> web.Response:
    plans = [plan_json(p) for p in control_of(request).config.plans]
    return respond({"items": plans})


@routes.get("/v1/subscription")
async def get_subscription(request: web.Request) -> web.Response:
    s = await session_of(request)
    return respond(await _store(request).subscription(s.account_id))


@routes.post("/v1/subscription")
async def subscribe(request: web.Request) -> web.Response:
    s = await session_of(request)
    f = Fields(await read_body(request))
    plan_id = _plan_id(f)
    f.done()
    return respond(await _store(request).subscribe(s.account_id, plan_id), status=201)


@routes.put("/v1/subscription")
async def change_plan(request: web.Request) -> web.Response:
    s = await session_of(request)
    f = Fields(await read_body(request))
    plan_id = _plan_id(f)
    f.done()
    return respond(await _store(request).change_plan(s.account_id, plan_id))


@routes.delete("/v1/subscription")
async def cancel(request: web.Request) -> web.Response:
    s = await session_of(request)
    await _store(request).cancel(s.account_id)
    return web.Response(status=204)


@routes.get("/v1/invoices")
async def list_invoices(request: web.Request) -> web.Response:
    s = await session_of(request)
    f = page_params(request.query)
    f.done()
    offset, limit = f.offset, f.limit  # type: ignore[attr-defined]
    items, total = await _store(request).invoices(
        account_id=s.account_id, offset=offset, limit=limit
    )
    return respond(page(items, total, offset, limit))


@routes.get("/v1/admin/invoices")
async def admin_list_invoices(request: web.Request) -> web.Response:
    await admin_of(request)
    f = page_params(request.query)
    status = f.choice("status", INVOICE_STATUSES, required=False)
    account_id = f.text("account_id", required=False, max_len=64)
    f.done()
    offset, limit = f.offset, f.limit  # type: ignore[attr-defined]
    items, total = await _store(request).invoices(
        account_id=account_id, status=status, offset=offset, limit=limit
    )
    return respond(page(items, total, offset, limit))


@routes.post("/v1/admin/invoices/{invoice_id}/paid")
async def admin_mark_paid(request: web.Request) -> web.Response:
    await admin_of(request)
    invoice_id = path_id(request, "invoice_id", "invoice")
    body = await read_body(request) if request.can_read_body else {}
    f = Fields(body)
    reference = f.text("reference", required=False, max_len=200, default="")
    f.done()
    return respond(await _store(request).mark_paid(invoice_id, reference))


@routes.post("/v1/admin/invoices/{invoice_id}/void")
async def admin_void(request: web.Request) -> web.Response:
    await admin_of(request)
    invoice_id = path_id(request, "invoice_id", "invoice")
    return respond(await _store(request).void(invoice_id))


# -- OpenAPI -------------------------------------------------------------------------------

_SESSION: list[dict[str, list[str]]] = [{"session": []}]
_PLAN = "#/components/schemas/Plan"
_INVOICE = "#/components/schemas/Invoice"
_SUB_AND_INVOICE = "#/components/schemas/SubscriptionAndInvoice"
_NUM_OR_NULL = {"type": ["number", "null"]}

_INVOICE_ID = {
    "name": "invoice_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"},
}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/v1/plans": {
            "get": {
                "operationId": "listPlans",
                "summary": "The plans on offer (public)",
                "tags": ["billing"],
                "responses": {
                    "200": json_response(
                        "plans",
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {"items": {"type": "array", "items": {"$ref": _PLAN}}},
                        },
                    )
                },
            }
        },
        "/v1/subscription": {
            "get": {
                "operationId": "getSubscription",
                "summary": "The account's subscription (null if none) and its open invoice",
                "description": (
                    "Reading it makes the renewal invoice when a paid period has ended."
                ),
                "tags": ["billing"],
                "security": _SESSION,
                "responses": {
                    "200": json_response("the subscription", {"$ref": _SUB_AND_INVOICE}),
                    **error_responses(401),
                },
            },
            "post": {
                "operationId": "subscribe",
                "summary": "Subscribe to a plan: pending until its first invoice is paid",
                "description": "409 while a subscription is pending or paid up.",
                "tags": ["billing"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/PlanChoice"),
                "responses": {
                    "201": json_response("subscribed (pending)", {"$ref": _SUB_AND_INVOICE}),
                    **error_responses(400, 401, 409, 413, 415),
                },
            },
            "put": {
                "operationId": "changePlan",
                "summary": (
                    "Change the plan: an upgrade once its prorated invoice is paid, a "
                    "downgrade from the next period"
                ),
                "description": (
                    "On a paid-up subscription, an upgrade (a higher price, same currency) "
                    "answers an open invoice of kind upgrade for the prorated difference: "
                    "(new price - current price) x (period_end - now) / (period_end - "
                    "period_start), rounded half up to a whole cent, at least 1 cent. The "
                    "plan, the entitlement and the next renewal stay on the current plan until "
                    "that invoice is paid; then the new plan applies for the rest of the paid "
                    "period (which is not extended) and renewals are at its price. Voided, or "
                    "not paid before period_end, it changes nothing. A downgrade (same or "
                    "lower price, or another currency) is kept in next_plan_id and applies "
                    "from the next period. Choosing the current plan keeps it. Each change "
                    "replaces the previous pending one: an upgrade drops a scheduled "
                    "downgrade, a second upgrade or a downgrade voids an unpaid upgrade's "
                    "invoice. Any change (the current plan included) of a subscription "
                    "canceled at period end resumes it: it renews again at period end (for "
                    "an upgrade, from the request, whether or not the upgrade is paid). On a "
                    "pending subscription the open first invoice is replaced by one for the "
                    "new plan. 404 when there is no pending or paid-up subscription."
                ),
                "tags": ["billing"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/PlanChoice"),
                "responses": {
                    "200": json_response("changed", {"$ref": _SUB_AND_INVOICE}),
                    **error_responses(400, 401, 404, 413, 415),
                },
            },
            "delete": {
                "operationId": "cancelSubscription",
                "summary": "Cancel at the end of the paid period (a pending one ends now)",
                "tags": ["billing"],
                "security": _SESSION,
                "responses": {"204": {"description": "canceled"}, **error_responses(401, 404)},
            },
        },
        "/v1/invoices": {
            "get": {
                "operationId": "listInvoices",
                "summary": "The account's invoices, newest first",
                "tags": ["billing"],
                "security": _SESSION,
                "parameters": PAGE_PARAMS,
                "responses": {
                    "200": json_response("invoices", page_of(_INVOICE)),
                    **error_responses(400, 401),
                },
            }
        },
        "/v1/admin/invoices": {
            "get": {
                "operationId": "adminListInvoices",
                "summary": "All invoices, newest first, by status and/or account",
                "tags": ["admin"],
                "security": _SESSION,
                "parameters": [
                    *PAGE_PARAMS,
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": list(INVOICE_STATUSES)},
                    },
                    {
                        "name": "account_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                    },
                ],
                "responses": {
                    "200": json_response("invoices", page_of(_INVOICE)),
                    **error_responses(400, 401, 403),
                },
            }
        },
        "/v1/admin/invoices/{invoice_id}/paid": {
            "parameters": [_INVOICE_ID],
            "post": {
                "operationId": "adminMarkInvoicePaid",
                "summary": (
                    "Record an open invoice as paid; activates or extends the subscription, or "
                    "applies an upgrade"
                ),
                "description": (
                    "409 when the invoice is not open (already paid, or void), or is an "
                    "upgrade whose period is over."
                ),
                "tags": ["admin"],
                "security": _SESSION,
                "requestBody": json_body("#/components/schemas/Payment", required=False),
                "responses": {
                    "200": json_response("paid", {"$ref": _INVOICE}),
                    **error_responses(400, 401, 403, 404, 409, 413, 415),
                },
            },
        },
        "/v1/admin/invoices/{invoice_id}/void": {
            "parameters": [_INVOICE_ID],
            "post": {
                "operationId": "adminVoidInvoice",
                "summary": "Void an open invoice; a subscription waiting on it ends",
                "description": (
                    "Voiding a first or renewal invoice (kind period) ends the pending or "
                    "lapsed subscription waiting on it; voiding an upgrade invoice leaves the "
                    "subscription on its current plan."
                ),
                "tags": ["admin"],
                "security": _SESSION,
                "responses": {
                    "200": json_response("voided", {"$ref": _INVOICE}),
                    **error_responses(401, 403, 404, 409),
                },
            },
        },
    },
    "schemas": {
        "Plan": {
            "type": "object",
            "required": [
                "id",
                "name",
                "max_streams",
                "max_height",
                "price_cents",
                "currency",
                "period_days",
            ],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "max_streams": {"type": "integer", "minimum": 1},
                "max_height": {"type": "integer", "minimum": 1},
                "price_cents": {"type": "integer", "minimum": 0},
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "period_days": {"type": "integer", "minimum": 1},
            },
        },
        "Subscription": {
            "type": "object",
            "required": [
                "plan_id",
                "plan",
                "status",
                "period_start",
                "period_end",
                "cancel_at_period_end",
                "next_plan_id",
                "entitled",
                "updated_at",
            ],
            "properties": {
                "plan_id": {"type": "string"},
                "plan": {"oneOf": [{"$ref": _PLAN}, {"type": "null"}]},
                "status": {"type": "string", "enum": list(SUBSCRIPTION_STATUSES)},
                "period_start": _NUM_OR_NULL,
                "period_end": {**_NUM_OR_NULL, "description": "paid until (unix seconds)"},
                "cancel_at_period_end": {"type": "boolean"},
                "next_plan_id": {"type": ["string", "null"]},
                "entitled": {"type": "boolean", "description": "whether playback is allowed"},
                "updated_at": {"type": "number"},
            },
        },
        "Invoice": {
            "type": "object",
            "required": [
                "id",
                "account_id",
                "plan_id",
                "amount_cents",
                "currency",
                "status",
                "period_start",
                "period_end",
                "provider",
                "reference",
                "created_at",
                "paid_at",
                "kind",
            ],
            "properties": {
                "id": {"type": "string"},
                "account_id": {"type": "string"},
                "plan_id": {"type": "string"},
                "amount_cents": {"type": "integer", "minimum": 0},
                "currency": {"type": "string"},
                "status": {"type": "string", "enum": list(INVOICE_STATUSES)},
                "period_start": {"type": "number"},
                "period_end": {"type": "number"},
                "provider": {"type": "string"},
                "reference": {"type": ["string", "null"]},
                "created_at": {"type": "number"},
                "paid_at": _NUM_OR_NULL,
                "kind": {
                    "type": "string",
                    "enum": list(INVOICE_KINDS),
                    "description": (
                        "period: a first or renewal invoice, buying period_start..period_end "
                        "of plan_id; upgrade: the prorated difference of an upgrade to "
                        "plan_id for the rest of the current period, applied when paid"
                    ),
                },
            },
        },
        "SubscriptionAndInvoice": {
            "type": "object",
            "required": ["subscription", "invoice"],
            "properties": {
                "subscription": {
                    "oneOf": [{"$ref": "#/components/schemas/Subscription"}, {"type": "null"}]
                },
                "invoice": {
                    "oneOf": [{"$ref": _INVOICE}, {"type": "null"}],
                    "description": "the open invoice to pay, if any",
                },
            },
        },
        "PlanChoice": {
            "type": "object",
            "additionalProperties": False,
            "required": ["plan_id"],
            "properties": {"plan_id": {"type": "string", "minLength": 1, "maxLength": 32}},
        },
        "Payment": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "reference": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 200,
                    "description": "the payment's reference (bank transfer, receipt)",
                }
            },
        },
    },
}
