"""Seeded network channel models: which packets are lost and which bits flip.

Every model draws from its own numpy Generator, so a run is reproducible byte
for byte from its seed and adding bit errors never changes the loss pattern.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import UsageError


class LossModel(Protocol):
    """Decides, packet after packet, whether the network drops it."""

    def lose_next(self) -> bool: ...


class BernoulliLoss:
    """Independent losses with probability `rate`."""

    def __init__(self, rate: float, rng: np.random.Generator):
        self._rate = rate
        self._rng = rng

    def lose_next(self) -> bool:
        return bool(self._rng.random() < self._rate)


class GilbertElliottLoss:
    """Two-state Markov channel: every packet sent in the Bad state is lost, none in the Good state.

    With mean burst length L, the Bad state is left with probability 1/L; it is
    entered with the probability that makes the stationary loss rate `rate`.
    """

    def __init__(self, rate: float, mean_burst: float, rng: np.random.Generator):
        if mean_burst < 1:
            raise UsageError(f"--burst must be at least 1 packet, got {mean_burst:g}")
        self.p_bad_to_good = 1.0 / mean_burst
        self.p_good_to_bad = rate * self.p_bad_to_good / (1.0 - rate)
        if self.p_good_to_bad > 1:
            raise UsageError(f"a loss rate of {rate:g} cannot have mean bursts as short as {mean_burst:g} "
                             f"packets (needs --burst >= {rate / (1 - rate):.3g})")
        self._rng = rng
        self._bad = bool(rng.random() < rate)  # start in the stationary distribution

    def lose_next(self) -> bool:
        lost = self._bad
        leave = self.p_bad_to_good if self._bad else self.p_good_to_bad
        if self._rng.random() < leave:
            self._bad = not self._bad
        return lost


class PatternLoss:
    """Replays a recorded loss pattern ('1' = lost), wrapping around."""

    def __init__(self, pattern: str):
        bits = "".join(pattern.split())
        if not bits or set(bits) - {"0", "1"}:
            raise UsageError("a loss pattern must be a non-empty string of 0 and 1 characters")
        self._bits = bits
        self._next = 0

    @classmethod
    def from_file(cls, path: Path) -> "PatternLoss":
        try:
            return cls(Path(path).read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read loss pattern {path}: {exc}") from exc

    @property
    def rate(self) -> float:
        return self._bits.count("1") / len(self._bits)

    def lose_next(self) -> bool:
        lost = self._bits[self._next] == "1"
        self._next = (self._next + 1) % len(self._bits)
        return lost


@dataclass(frozen=True)
class BitErrors:
    """Bit errors inside a byte range: each bit starts an error with probability `rate`.

    An error flips one bit, or with `byte_burst` = N overwrites N bytes from the
    hit byte onward with random values (a burst of corrupted symbols).
    """

    rate: float
    byte_burst: int
    rng: np.random.Generator

    def corrupt(self, data: bytearray, start: int, end: int) -> list[int]:
        """Corrupt data[start:end] in place; return the hit bit offsets (relative to `start`)."""
        bits = 8 * (end - start)
        if self.rate <= 0 or bits <= 0:
            return []
        count = int(self.rng.binomial(bits, self.rate))
        if count == 0:
            return []
        positions = np.sort(self.rng.choice(bits, size=count, replace=False))
        for bit in positions:
            byte = start + int(bit >> 3)
            if self.byte_burst:
                run_end = min(end, byte + self.byte_burst)
                data[byte:run_end] = self.rng.integers(0, 256, run_end - byte, dtype=np.uint8).tobytes()
            else:
                data[byte] ^= 0x80 >> int(bit & 7)
        return [int(b) for b in positions]


class ChannelLog:
    """Counts what went through the channel: packets sent and lost, and loss-burst lengths."""

    def __init__(self) -> None:
        self.sent = 0
        self.lost = 0
        self.bursts: dict[int, int] = {}
        self._run = 0

    def record(self, lost: bool) -> None:
        self.sent += 1
        if lost:
            self.lost += 1
            self._run += 1
        else:
            self.close_burst()

    def close_burst(self) -> None:
        """End the current run of losses (call once more after the last packet)."""
        if self._run:
            self.bursts[self._run] = self.bursts.get(self._run, 0) + 1
            self._run = 0
