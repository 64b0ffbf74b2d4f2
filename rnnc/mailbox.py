"""The driver's mailbox of a fleet sweep (`rnnc bench --cluster`): a Ray actor class that jobs
send their messages to. It lives outside `rnnc.bench` so that the Ray worker hosting it imports
nothing but this (no runtime, no torch): on a node that also benches, that worker starts in about
a second and then sleeps, where one importing `rnnc.bench` would spend two more seconds of CPU
beside the bench job's own start."""
from __future__ import annotations

import asyncio
from typing import Any


class Collector:
    """The driver's mailbox (a Ray actor on the head node): jobs `put` messages, the driver
    `take`s them, waiting up to `wait_s` for the first, so that it polls neither Ray nor the CPU."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def put(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.arrived.set()

    async def wake(self) -> None:
        """Ends a waiting `take` now: the driver's, once a job has ended with nothing more to send."""
        self.arrived.set()

    async def take(self, wait_s: float) -> list[dict[str, Any]]:
        if not self.messages:
            try:
                await asyncio.wait_for(self.arrived.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        taken, self.messages = self.messages, []
        self.arrived.clear()
        return taken
