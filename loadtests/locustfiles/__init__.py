"""Locust load tests of the CDN: viewers.py (viewers end to end), segments.py (signed segment load
on one edge with a chosen hit/miss mix), apis.py (steering and control-plane read APIs).
What they share: run.py (options, thresholds, reports, roles in a distributed run), accounts.py
(accounts, sessions, answer checks), catalog.py (Zipf over the catalog), signing.py (edge
tokens); thresholds.py and workload.py are their pure parts (no locust, no gevent:
tests/test_locust.py imports them). loadtests/README.md, "Load tests with locust", has the
commands."""
