"""Decisions over detections, as a list of small stages (in the spirit of Prometheus Alertmanager).

``pipeline.decide_stages()`` is the list; each stage is a class with one
``run`` over a ``context.DecideContext``. Read the modules in pipeline order:

- ``followup`` a detection is evidence for pending rollback watches (and, after
  ``resolve``, watches past their deadline fail)
- ``route``    which policy rules a detection is about
- ``gates``    minimum samples, minimum effect size, N consecutive windows (hysteresis)
- ``resolve``  when the time-based rest of a step runs (settle); stale and cleared alerts resolve
- then, per firing alert:
- ``inhibit``  a firing alert mutes others (rollback mutes retrain; broken input mutes drift)
- ``silence``  maintenance windows
- ``announce`` the first firing event of an alert
- ``dedup``    incidents and idempotency keys, deterministic under replay
- ``cooldown`` quiet time and rate limit per model
- ``publish``  the action's CloudEvent, and what one step decided (the pipeline never sends anything)
- and once per step: ``page``  one notification per alert group (repeat interval, resolved page)

Around them: ``policy`` (the YAML file), ``alerts`` (fingerprints, groups),
``actions`` (CloudEvents and their Kafka binding), ``stable`` (rollback
targets), ``watch`` (is a rollback's target better?), ``notify`` (the
Dispatcher) with one notifier per integration in ``notifiers/`` (webhook,
Slack, PagerDuty, Alertmanager) and ``explain`` (policy check and backtest for
the CLI).
"""
