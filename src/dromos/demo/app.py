"""The demo's app and tasks: the jobs a small shop hands to the background.

Worker processes import this module as ``dromos.demo.app:app``; the broker comes from
``$DROMOS_BROKER``, which ``dromos demo`` sets for itself and its workers. The tasks sleep
and fail on purpose, deterministically, so the demo can check each outcome: retries are
driven by the attempt number, the dead letter by a file the demo removes to "fix the outage".
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import dromos

__all__ = [
    "LEDGER_ENV",
    "RESIZE_STEPS",
    "app",
    "batch_report",
    "bill_order",
    "charge_card",
    "count_order",
    "fetch_feed",
    "make_thumbnail",
    "parse_feed",
    "price_quote",
    "refresh_rates",
    "resize_image",
    "send_newsletter",
    "send_password_reset",
    "send_receipt",
    "send_reminder",
    "store_items",
    "sync_inventory",
]

# A short lease: the demo runs for seconds, and a lost worker should not stall it for long.
app = dromos.App("demo", lease=10.0)

#: What ``resize_image`` reports, one message per step.
RESIZE_STEPS = (
    "downloading the original",
    "decoding JPEG",
    "correcting orientation",
    "resizing",
    "sharpening",
    "encoding WebP",
    "uploading to the CDN",
    "purging the cache",
)

#: Seconds per step of ``resize_image``: long enough to watch its progress bar move.
STEP_SECONDS = 0.6


@app.task(queue="media", timeout=60.0)
async def resize_image(name: str, width: int = 640) -> dict[str, Any]:
    """A slow job that reports progress and a message at every step."""
    job = dromos.current_job()
    for step, message in enumerate(RESIZE_STEPS):
        await job.progress(step / len(RESIZE_STEPS), message)
        await asyncio.sleep(STEP_SECONDS)
    stem = name.rsplit(".", 1)[0]
    return {"path": f"/thumbs/{stem}-{width}.webp", "width": width}


@app.task(queue="payments", retries=3, backoff=0.3, events=True)
def charge_card(order_id: int, amount_cents: int) -> str:
    """A flaky call: the gateway times out on the first two attempts, then answers.

    A plain ``def`` (it runs in the worker's threads); the attempt number decides, so the
    outcome is the same on every run of the demo. ``events=True``: its jobs announce their
    changes on the event bus, where ``send_receipt`` learns of the payment.
    """
    attempt = dromos.current_job().attempt
    if attempt < 3:
        raise ConnectionError(f"payment gateway timed out (attempt {attempt})")
    return f"ch_{order_id}_{amount_cents}"


@app.task(queue="default", retries=2, backoff=0.2)
def sync_inventory(warehouse: str, outage_file: str) -> int:
    """Fails for as long as ``outage_file`` exists: it exhausts its retries and is dead-lettered.

    Once the outage is over (the demo removes the file), replaying the dead letter succeeds:
    the usual way out of the dead-letter list is to fix the cause, then replay.
    """
    if Path(outage_file).exists():
        raise RuntimeError(f"warehouse {warehouse} answered 503")
    return 1280  # items synced


@app.task(queue="default")
async def send_reminder(user_id: int) -> float:
    """A delayed job: returns when it ran, so the demo can check it did not run early."""
    return time.time()


@app.task(queue="email")
async def send_newsletter(user_id: int) -> None:
    """One of a burst of thousands of small jobs (enqueued in one round trip)."""


@app.task(queue="email", priority=10)
async def send_password_reset(user_id: int) -> float:
    """Urgent mail in the same queue as the newsletters: priority 10 lets it jump the line."""
    return time.time()


@app.task(queue="default")
async def price_quote(sku: str, quantity: int = 1) -> dict[str, Any]:
    """A quick job another service asks for over HTTP (the demo's second act)."""
    return {"sku": sku, "quantity": quantity, "total_cents": 1999 * quantity}


# -- the event bus (the demo's third act) -------------------------------------------------
#: Where the subscribers note what they handled: "group pid topic id" per line (the demo
#: process reads it to show who got what; the subscribers run in the worker processes).
LEDGER_ENV = "DROMOS_DEMO_EVENTS"


def _note(group: str, event: dromos.Event[Any], what: str) -> None:
    path = os.environ.get(LEDGER_ENV)
    if path:
        with open(path, "a") as ledger:  # one short line per write: appends never interleave
            ledger.write(f"{group} {os.getpid()} {event.type} {what}\n")


@app.subscriber("orders.created", group="billing")
async def bill_order(event: dromos.Event[dict[str, Any]]) -> None:
    """Billing invoices every new order (two instances share the work)."""
    _note("billing", event, event.id)


@app.subscriber("orders.#", group="analytics")
def count_order(event: dromos.Event[dict[str, Any]]) -> None:
    """Analytics counts everything about orders (one instance; a plain function)."""
    _note("analytics", event, event.id)


@app.subscriber("dromos.job.succeeded", group="receipts")
async def send_receipt(event: dromos.Event[dict[str, Any]]) -> None:
    """Learns of completed payments from the job lifecycle events, without polling."""
    if event.data["task"] == "charge_card":
        _note("receipts", event, event.data["id"])


# -- a periodic task (every worker runs the scheduler; one fires each tick) -----------------
@app.periodic(every=2.0, queue="default")
async def refresh_rates() -> str:
    """Every two seconds: the demo checks each tick ran once, whichever worker fired it."""
    return dromos.current_job().headers.get("scheduled_for", "")


# -- batches and chains ---------------------------------------------------------------------
@app.task(queue="media", retries=0)
async def make_thumbnail(photo: int) -> str:
    """One job of the demo's batch; every 50th photo is corrupt (fails for good)."""
    await asyncio.sleep(0.002)
    if photo % 50 == 49:
        raise ValueError(f"photo {photo} is corrupt")
    return f"/thumbs/{photo}.webp"


@app.task(queue="default")
async def batch_report(summary: dict[str, Any]) -> str:
    """The batch's on_complete: runs once, when every thumbnail job has ended."""
    return f"{summary['succeeded']} thumbnails made, {summary['failed']} photos corrupt"


@app.task
async def fetch_feed(url: str) -> list[str]:
    """Step 1 of the demo's chain."""
    return [f"{url}#item-{i}" for i in range(3)]


@app.task
async def parse_feed(items: list[str]) -> list[dict[str, str]]:
    """Step 2: gets step 1's result as its first argument."""
    return [{"link": link, "title": link.rsplit("#", 1)[1]} for link in items]


@app.task
async def store_items(rows: list[dict[str, str]], table: str) -> str:
    """Step 3: gets step 2's result first, then its own argument."""
    return f"{len(rows)} rows into {table}"
