"""The event bus: CloudEvents published to topics, handled by consumer groups.

``app.publish("orders.created", {...})`` appends an event; ``@app.subscriber("orders.*",
group="billing")`` handles them in every worker that runs the app. See ``docs/events.md``.
"""

from __future__ import annotations

from dromos.events.envelope import Event, decode_event, encode_event
from dromos.events.subscriber import Subscriber
from dromos.events.topics import check_pattern, check_topic, matches

__all__ = [
    "Event",
    "Subscriber",
    "check_pattern",
    "check_topic",
    "decode_event",
    "encode_event",
    "matches",
]
