"""Decisions over detections, as a pipeline of small stages (in the spirit of Prometheus Alertmanager).

Read the modules in pipeline order:

- ``route``    which policy rules a detection is about
- ``gates``    minimum samples, minimum effect size, N consecutive windows (hysteresis)
- ``inhibit``  a firing alert mutes others (rollback mutes retrain; broken input mutes drift)
- ``silence``  maintenance windows
- ``dedup``    idempotency keys, deterministic under replay
- ``cooldown`` quiet time and rate limit per model
- ``publish``  what one step decided (the pipeline never sends anything itself)
- ``pipeline`` the :class:`~retrain_trigger.pipeline.Decider` that runs them in order

Around them: ``policy`` (the YAML file), ``alerts`` (fingerprints, groups,
repeat interval), ``actions`` (CloudEvents and their Kafka binding), ``stable``
(rollback targets), ``watch`` (is a rollback's target better?), ``notify``
(webhook, Slack, PagerDuty, Alertmanager delivery) and ``explain`` (policy
check and backtest for the CLI).
"""
