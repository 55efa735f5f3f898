"""Capacity math: plans, windows, the usage ledger, forecasts, learned limits, reservations.

Pure like the rest of ``domain/``: time is always an argument (``now`` in epoch
seconds), nothing here reads a clock, a file or the environment. Modules, inside out::

    families   model name -> model family (opus / sonnet / haiku)
    windows    5-hour session windows and DST-correct weekly windows
    plans      typed plan config; the *usage unit* (weighted tokens)
    signals    the provider's rate-limit signals and the windows they describe
    ledger     usage entries folded into per-window totals; provider signals first
    forecast   EWMA burn rates and projections with an interval
    warnings   threshold and projected-overrun warnings, once per window
    costs      expected units of a task, learned from finished attempts
    limits     effective limits learned from limit hits, probed back up slowly
    enforce    reservations: used + reserved never exceeds the budget
"""
