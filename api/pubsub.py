"""One Redis pub/sub subscription per API process, and a sweep that makes up for it.

Redis pub/sub is at-most-once: a message published while nobody is subscribed, or while
the connection is being replaced, reaches nobody. So every listener here pairs its
subscription with a periodic database sweep, and is told each time it (re)subscribes,
to look at once at what it may have missed. Subclasses say which channels they read,
what a message means, and what their sweep does: `api/job_waiters.py` (v1 calls waiting
for their job) and `api/job_events.py` (event streams).

Listeners belong to the event loop that started them (their asyncio events do), and
live in `app.state` under a name of their own: `started_listener` gives the running
one, `listener_lifespan` starts it with the app and stops it after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from fastapi import FastAPI

from common import redis_clients

logger = logging.getLogger(__name__)

# How long one read of the channel blocks; between reads redis-py sends its health-check
# PING, so a silently dead connection is noticed and replaced.
_READ_TIMEOUT_SECONDS = 5.0
_MAX_BACKOFF_SECONDS = 10.0


class PubSubListener:
    """Subscribes to `channels` until stopped, resubscribing with backoff after any
    error, and runs `sweep_forever` beside it."""

    name = "pubsub"
    channels: tuple[str, ...] = ()

    def __init__(self, redis_url: str, sweep_seconds: float) -> None:
        self._redis_url = redis_url
        self._sweep_seconds = sweep_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop its events belong to
        self.subscribed = False  # whether messages are being received right now
        self.subscriptions = 0  # successful (re)subscriptions since start

    def on_subscribed(self) -> None:
        """Called after each (re)subscription: what was published before reached nobody."""

    def on_message(self, channel: str, data: str | bytes) -> None:
        """One message from one of `channels`."""

    async def sweep_forever(self) -> None:
        """The database sweep covering lost messages; runs until cancelled."""

    def start(self) -> None:
        if not self._tasks:
            self.loop = asyncio.get_running_loop()
            self._tasks = [
                asyncio.create_task(self._subscribe_forever(), name=f"{self.name}-subscriber"),
                asyncio.create_task(self.sweep_forever(), name=f"{self.name}-sweeper"),
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _subscribe_forever(self) -> None:
        backoff = 0.5
        while True:
            client = redis_clients.subscriber(self._redis_url)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(*self.channels)
                    self.subscribed = True
                    self.subscriptions += 1
                    backoff = 0.5
                    self.on_subscribed()
                    while True:
                        message = await pubsub.get_message(timeout=_READ_TIMEOUT_SECONDS)
                        if message is not None and message.get("type") == "message":
                            channel = message["channel"]
                            if isinstance(channel, bytes):
                                channel = channel.decode()
                            self.on_message(channel, message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning(
                    "%s: notifications lost (Redis); falling back to the %.0fs sweep until "
                    "the subscription is back",
                    self.name,
                    self._sweep_seconds,
                    exc_info=True,
                )
            finally:
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)


Listener = TypeVar("Listener", bound=PubSubListener)


def started_listener(app: FastAPI, attr: str, make: Callable[[], Listener]) -> Listener:
    """The process's listener stored as `app.state.<attr>`, started on first use if the
    lifespan did not start it (an app driven without its lifespan, e.g. a TestClient
    outside `with`). One left from another event loop is unusable and replaced."""
    listener: Listener | None = getattr(app.state, attr, None)
    if listener is None or listener.loop not in (None, asyncio.get_running_loop()):
        listener = make()
        setattr(app.state, attr, listener)
    listener.start()
    return listener


@contextlib.asynccontextmanager
async def listener_lifespan(
    app: FastAPI, attr: str, get: Callable[[FastAPI], PubSubListener]
) -> AsyncIterator[None]:
    """Subscribe at startup, so the first request finds messages flowing."""
    listener = get(app)
    try:
        yield
    finally:
        await listener.stop()
        setattr(app.state, attr, None)
