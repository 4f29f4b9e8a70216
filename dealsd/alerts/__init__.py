"""Alerts: the operator hears of a deal worth buying, once, on their own channel.

``rules`` (which deals match), ``outbox`` (alerts written in the same
transaction as the change that caused them), ``sender`` (the worker that
delivers them, with retries and digests), ``channels`` (Apprise URLs, read
from a secret file and never shown), ``message`` (what an alert says).
"""
