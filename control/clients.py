"""The client's address of a request, through trusted reverse proxies.

Behind a reverse proxy ``request.remote`` is the proxy's address: every client would share
one per-address rate-limit bucket (and playback's steering and token IP binding would see the
proxy). ``trusted_proxies`` (control/config.py) lists the proxies whose ``X-Forwarded-For``
is believed. :func:`client_address` then follows RFC 7239's model of a chain of forwarding
nodes, each appending the address it received the request from:

* The TCP peer is not a trusted proxy (or none is configured, or there is no
  X-Forwarded-For): the peer is the client; X-Forwarded-For is ignored, since any client can
  send one with any address in it.
* The peer is a trusted proxy: the X-Forwarded-For entries are walked from the right (the
  entry the nearest proxy appended) and the first one that is not itself a trusted proxy is
  the client. Entries left of it are never looked at: the client wrote them.
* The walk cannot go on (every entry is a trusted proxy, or an entry is not an address, such
  as ``unknown`` or garbage a proxy passed on): the last address reached is the client, that
  is the nearest hop we can vouch for. So a malformed header never fails the request and
  never lets a client pick its own key.

Several X-Forwarded-For header lines are joined in order (RFC 9110 field combination). Ports
(``1.2.3.4:5678``, ``[2001:db8::1]:443``) are dropped and IPv4-mapped IPv6 addresses become
IPv4 (steering/locality.py's ``parse_address``), so one client has one spelling. A peer that
is not an IP address (a Unix socket) is returned as aiohttp gives it, ``"unknown"`` for none.

steering/locality.py's ``parse_client_address`` implements the same walk for steering but
raises on a malformed entry (steering answers 400); here the request goes on instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network

from aiohttp import web

from steering.locality import IPAddress, LocalityError, parse_address

__all__ = ["client_address", "forwarded_client"]

IPNetwork = IPv4Network | IPv6Network


def _trusted(addr: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    # `in` across address families is simply False, so mixed lists are fine.
    return any(addr in net for net in proxies)


def forwarded_client(
    remote: str | None, forwarded_for: Sequence[str], proxies: Sequence[IPNetwork]
) -> str:
    """The client's address from the TCP peer ``remote``, the X-Forwarded-For header values
    ``forwarded_for`` (in the order received) and the trusted ``proxies``; see the module
    docstring. Never raises."""
    if not remote:
        return "unknown"
    try:
        peer = parse_address(remote)
    except LocalityError:
        return remote
    if not proxies or not _trusted(peer, proxies):
        return str(peer)
    hops = [h for value in forwarded_for for h in value.split(",")]
    addr = peer
    for raw in reversed(hops):
        if not raw.strip():
            continue  # "a, , b" or a trailing comma: no hop there
        try:
            addr = parse_address(raw)
        except LocalityError:
            break  # cannot vouch for anything further left
        if not _trusted(addr, proxies):
            break
    return str(addr)


def client_address(request: web.Request) -> str:
    """The client's address of ``request`` (``config.trusted_proxies`` applied); use it
    wherever a handler would use ``request.remote`` as the client's identity."""
    from .app import control_of  # here, not at import: control.app imports the routes

    proxies = control_of(request).config.trusted_proxies
    if not proxies:
        return forwarded_client(request.remote, (), ())
    return forwarded_client(request.remote, request.headers.getall("X-Forwarded-For", []), proxies)
