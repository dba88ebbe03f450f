"""The worker: the asyncio runtime, the executors for plain functions, and the supervisor."""

from dromos.worker.runtime import Worker

__all__ = ["Worker"]
