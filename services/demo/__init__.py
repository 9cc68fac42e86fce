"""``loopwatch demo``: real traffic through the whole loop, and a summary of what happened.

The demo starts what it needs (the embedded broker unless ``--bootstrap`` names
a Kafka, and one worker), replays real HH-RLHF and OASST1 exchanges with their
human feedback plus malformed messages derived from them, then reads the
output topics like any downstream consumer would and reports what it saw.

``scenario`` is the traffic and the worker's setup, ``observe`` reads the
topics, metrics and datasets back, ``render`` summarizes, ``run`` puts them in order.
"""

from services.demo.run import run_demo
from services.demo.scenario import CANARY_VERSION, WINDOW_SECONDS, Traffic, build_traffic

__all__ = ["CANARY_VERSION", "WINDOW_SECONDS", "Traffic", "build_traffic", "run_demo"]
