"""Job lifecycle events: a job's changes of state as events on the bus.

With ``App(job_events=True)`` (or ``@app.task(events=True)``) the bus carries
``dromos.job.queued``, ``.started``, ``.progress``, ``.succeeded``, ``.failed`` and
``.cancelled`` for the jobs of those tasks, so another service learns of a completion by
subscribing (``@app.subscriber("dromos.job.succeeded", group=...)``) instead of polling.

Who writes them: the producer (``queued``, and ``cancelled`` of a job cancelled before it ran)
and the worker (the others). A worker publishes an attempt's end in the same flush as, and
*before*, the write that settles it: if the worker dies in between, the job runs again and
its end is announced again, never lost (a consumer tells attempts apart by ``attempt``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from dromos.brokers.base import EventRecord
from dromos.events.envelope import encode_event
from dromos.job import JobError
from dromos.message import new_job_ids, utcnow

__all__ = ["JOB_EVENT_TYPES", "RESULT_LIMIT", "job_event"]

JOB_EVENT_TYPES = {
    state: f"dromos.job.{state}"
    for state in ("queued", "started", "progress", "succeeded", "failed", "cancelled")
}
RESULT_LIMIT = 65536  # bytes of JSON result an event carries; a longer one is left out


def job_event(
    source: str,
    kind: str,
    *,
    job_id: str,
    task: str,
    queue: str,
    attempt: int,
    progress: float | None = None,
    message: str | None = None,
    result: bytes | None = None,
    error: JobError | None = None,
) -> EventRecord:
    """The event of one change of a job (``kind`` is a key of :data:`JOB_EVENT_TYPES`)."""
    state = {"started": "running", "progress": "running"}.get(kind, kind)
    data: dict[str, Any] = {
        "id": job_id, "task": task, "queue": queue, "state": state, "attempt": attempt,
    }  # fmt: skip
    if progress is not None:
        data["progress"] = progress
        data["message"] = message
    if result is not None:
        if len(result) <= RESULT_LIMIT:
            data["result"] = msgspec.Raw(result)
        else:
            data["result_omitted"] = True  # read it with job.status()
    if error is not None:
        data["error"] = {"type": error.type, "message": error.message}
    topic = JOB_EVENT_TYPES[kind]
    event_id = new_job_ids(1)[0]
    body = encode_event(topic, data, event_id=event_id, source=source, time=utcnow(),
                        subject=job_id)  # fmt: skip
    return EventRecord(topic, event_id, body)
