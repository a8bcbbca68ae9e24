"""Per-connection rate limiting: a token bucket refilled at the tenant's ``messages_per_second``."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..errors import RateLimited


@dataclass(slots=True)
class TokenBucket:
    """Allows bursts of up to one second's worth of events, then the steady rate."""

    tokens: float = -1.0
    updated: float = field(default_factory=time.monotonic)

    def take(self, rate: float) -> None:
        """Spend one token at ``rate`` per second, or raise ``RateLimited`` with the wait."""
        capacity = max(1.0, rate)
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = capacity
        else:
            self.tokens = min(capacity, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return
        wait_ms = math.ceil((1.0 - self.tokens) / rate * 1000)
        raise RateLimited(
            f"more than {rate:g} events per second on this connection", retry_after_ms=wait_ms
        )
