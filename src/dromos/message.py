"""The envelope: one JSON object per job, the same on every broker.

A job travels as a JSON object that a Go or Node service can produce without Python (the
JSON Schema is in ``docs/wire-format.md``). It is never pickled. Decoding is strict: a
message missing a field, or of a version this code does not speak, is refused with a reason
that ends up in the dead-letter list.
"""

from __future__ import annotations

import os
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = [
    "ENVELOPE_VERSION",
    "DecodeError",
    "Message",
    "decode",
    "encode",
    "new_job_id",
    "new_job_ids",
]

#: The envelope version this code writes and reads.
ENVELOPE_VERSION = 1


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """A job as it travels through a broker."""

    v: int = ENVELOPE_VERSION
    """Envelope version; a reader refuses a version it does not know."""
    id: str
    """The job id: a UUIDv7 string, so ids sort by creation time."""
    task: str
    """The registered task name the worker looks up."""
    queue: str = "default"
    """The queue the job waits in; workers choose queues with ``-q``."""
    args: list[Any] = []
    """Positional arguments, JSON values already validated against the signature."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments, JSON values already validated against the signature."""
    attempt: int = 0
    """Attempts started before this message was written (the broker keeps the live count)."""
    max_attempts: int = 1
    """Failed attempts allowed before the job is dead-lettered (retries + 1)."""
    eta: datetime | None = None
    """Not before this time (UTC); ``None`` means as soon as possible."""
    priority: int = 0
    """Higher runs first within a queue; ties run in enqueue order."""
    timeout: float | None = None
    """Time limit of one attempt in seconds; ``None`` takes the task's own."""
    created_at: datetime
    """When the job was enqueued (UTC)."""
    headers: dict[str, str] = {}
    """Free-form string metadata: ``traceparent``, ``idempotency_key``, ``callback_url``,
    ``batch_id``; unknown headers are kept and passed on."""


class DecodeError(ValueError):
    """The bytes are not a valid envelope; the message says which part is wrong."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)


def encode(message: Message) -> bytes:
    """Encode an envelope to its JSON wire form."""
    return _encoder.encode(message)


def decode(data: bytes | str) -> Message:
    """Decode and check an envelope; raise :class:`DecodeError` with the reason if invalid."""
    try:
        message = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"undecodable envelope: {exc}") from None
    if message.v != ENVELOPE_VERSION:
        raise DecodeError(
            f"unsupported envelope version {message.v} (this worker reads {ENVELOPE_VERSION})"
        )
    return message


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (what the envelope stores)."""
    return datetime.now(UTC)


_lock = threading.Lock()
_last_ms = 0
_seq = 0
# The ids' random bits: a generator seeded from the OS, not a system call per id (an id needs
# uniqueness, not secrecy). A forked child reseeds, or it would repeat its parent's bits.
_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


# Where the 32 hex digits of a UUID go in its 36-character text (the others are dashes).
_DIGITS = [q for q in range(36) if q not in (8, 13, 18, 23)]
_MANY = 32  # from this many ids on, they are formatted all at once (below, one by one)


def new_job_ids(count: int) -> list[str]:
    """``count`` UUIDv7s (RFC 9562): 48 bits of Unix milliseconds, a 12-bit counter, randomness.

    Within one process the ids are strictly increasing, so jobs enqueued in a burst keep their
    order when a broker sorts by id; a burst of more than 4,096 in one millisecond borrows the
    next milliseconds. One lock serves the whole batch.
    """
    global _last_ms, _seq
    stamps = []  # the high 64 bits of each id: milliseconds, version 7, counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms, seq = _last_ms, _seq + 1
        else:
            seq = _rng.getrandbits(10)  # leave room to count up
        for _ in range(count):
            if seq > 0xFFF:  # counter exhausted within one millisecond: borrow the next
                ms, seq = ms + 1, 0
            stamps.append((ms << 16) | 0x7000 | seq)
            seq += 1
        _last_ms, _seq = ms, seq - 1
    if count >= _MANY:
        return _format_many(stamps)
    ids = []
    for stamp in stamps:
        rand = _rng.getrandbits(62)
        h = f"{(stamp << 64) | (0b10 << 62) | rand:032x}"  # str(uuid.UUID(int=...)), cheaper
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def _format_many(stamps: list[int]) -> list[str]:
    """The same text as the loop in :func:`new_job_ids`, built with a few slice copies per
    batch instead of string formatting per id."""
    count = len(stamps)
    high = b"".join([stamp.to_bytes(8, "big") for stamp in stamps])
    raw = bytearray(_rng.randbytes(16 * count))  # 16 bytes per id: the stamp, then randomness
    for k in range(8):
        raw[k::16] = high[k::8]
    raw[8::16] = bytes([0x80 | (b & 0x3F) for b in raw[8::16]])  # the variant bits: 10
    digits = raw.hex().encode()
    text = bytearray(b"-" * (36 * count))
    for source, target in enumerate(_DIGITS):
        text[target::36] = digits[source::32]
    joined = text.decode()
    return [joined[i : i + 36] for i in range(0, 36 * count, 36)]


def new_job_id() -> str:
    """One UUIDv7; see :func:`new_job_ids`."""
    return new_job_ids(1)[0]
