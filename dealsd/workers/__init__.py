"""The workers and what runs them.

``upserter`` (the /deal pages), ``backfiller`` (the /product histories, its
next batch chosen by ``backfill_queue``), ``janitor`` (pruning) each do one
round at a time (``base``); the ``supervisor`` runs, restarts and stops them;
``health`` turns their progress into states, stall windows and the one-line
summary, handed out as the frozen values of ``health_types``.
"""
