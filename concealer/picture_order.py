"""Picture order counts by timestamp: what tells a variable frame rate from frames that were lost.

A gap between two pictures' timestamps wider than a frame is either a frame that never arrived or a
frame that was never there: phones record at a variable rate and hold a frame longer when the light is
low. Timestamps alone cannot tell the two apart (a clean 60-frame clip with every tenth frame held twice
as long came out of `conceal` with 65 frames, five of them invented). The slice headers can: H.264 and
HEVC count the pictures of each coded video sequence in presentation order (the picture order count),
and a lost picture leaves a hole in that count where a long-held one does not.
"""
from __future__ import annotations

from fractions import Fraction


def order_count(previous: int, lsb: int, limit: int) -> int:
    """A picture's order count from its pic_order_cnt_lsb (`lsb`) and the order count of the picture it is counted
    from (`previous`), `limit` being MaxPicOrderCntLsb: the high part steps by `limit` where the low part wrapped
    (H.264 8.2.1.1, H.265 8.3.1)."""
    previous_lsb = previous & (limit - 1)
    msb = previous - previous_lsb
    if lsb < previous_lsb and previous_lsb - lsb >= limit // 2:
        msb += limit
    elif lsb > previous_lsb and lsb - previous_lsb > limit // 2:
        msb -= limit
    return msb + lsb


# Pictures in a row, one count step apart, before the step is trusted as the stream's cadence: a stream
# that starts with a loss must not make the step of the gap its cadence.
ESTABLISHED = 8
# Pictures beyond those a gap holds at the nominal rate that the order counts may put in it. A variable rate holds
# frames longer, or sends a few a little faster (fire2_720p_rotated: 7 pictures by the counts in 6.2 nominal frame
# intervals); but a lost IDR picture starts a coded video sequence whose counts begin again, and the pictures after
# it were counted on from the sequence before. bikes_640x272 damaged as it is over RTP at 5% loss, seed 4, lost its
# IDR picture 242: the picture after it lay two frames after the last one shown but 11 count steps on, so ten lost
# frames 93 ticks apart instead of one at 512; into MKV at 10% loss, seed 5, its IDR picture 137 and the two after
# it: six lost frames in a gap of four frame intervals.
EXTRA_PICTURES = 1


class PictureOrder:
    """The picture order count of each picture that arrived, by pts, as the stream repair parsed it; asked
    in presentation order how many pictures are missing between two that came out."""

    def __init__(self) -> None:
        self._counts: dict[int, tuple[int, int]] = {}  # pts -> (coded video sequence, picture order count)
        self._step: int | None = None  # the smallest count step seen between pictures that came out in a row
        self._steps_seen = 0
        # Timestamp ticks per order count step, and the last picture recorded: (sequence, count, pts), None untimed.
        self.ticks_per_step: Fraction | None = None
        self._last_timed: tuple[int, int, int] | None = None

    def record(self, pts: int | None, sequence: int, count: int | None) -> None:
        """Picture `pts` has order `count` in the `sequence`-th coded video sequence (None: not known). A second
        picture stamped with the same time keeps the first one's count: the first is the one shown there. With the
        picture recorded before, both timed and of one sequence, it gives the ticks per count step (foreman at
        29.97 fps over MPEG-TS in H.264: 3003 ticks a frame, 1501.5 a step), by which the stream repairs time the
        pictures they split out of one packet or rebuild."""
        if pts is not None and count is not None:
            self._counts.setdefault(pts, (sequence, count))
        last = self._last_timed
        self._last_timed = None if pts is None or count is None else (sequence, count, pts)
        if last is not None and self._last_timed is not None and last[0] == sequence and count != last[1]:
            if (ticks := Fraction(pts - last[2], count - last[1])) > 0:
                self.ticks_per_step = ticks

    def missing_between(self, earlier: int, later: int, intervals: Fraction | None = None) -> int | None:
        """How many pictures the order counts put between the pictures at `earlier` and `later`, which came out
        one after the other; None where they cannot say (a count not parsed, another coded video sequence, a
        cadence not yet established or not kept). Forgets every picture up to `earlier`.

        `intervals`: the frame intervals the timestamps put between the two. Before the cadence is established,
        the smallest step seen so far counts where it agrees with them to within one interval: fire2_720p_rotated,
        a phone clip whose frames came 7,199-9,007 ticks apart (simulate-loss --as-is at 3%), lost six frames in a
        row after its fifth, a gap of 6.2 frames at its nominal rate, 7 by the counts."""
        first, second = self._counts.get(earlier), self._counts.get(later)
        for pts in [pts for pts in self._counts if pts <= earlier]:
            del self._counts[pts]
        if first is None or second is None or first[0] != second[0] or second[1] <= first[1]:
            return None
        step = second[1] - first[1]
        if self._step is None or step < self._step:
            self._step, self._steps_seen = step, 0
        if step == self._step:
            self._steps_seen += 1
        if step % self._step:
            return None
        if self._steps_seen < ESTABLISHED and (intervals is None or abs(step // self._step - intervals) >= 1):
            return None
        if intervals is not None and step // self._step > intervals + EXTRA_PICTURES:
            return None  # more pictures than the time between them holds: the counts are not of one sequence
        return step // self._step - 1


class FrameClock:
    """Timestamps for the pictures of a stream that has none (raw Annex B), so that a lost one leaves a gap in them:
    by decode order (`after`), or by order count (`ordered`: `steps` of it a frame), each coded video sequence's
    count 0 placed right after the last picture stamped before it."""

    def __init__(self, frame_ticks: Fraction, steps: int):
        self._ticks, self._steps = frame_ticks, steps
        self._next = 0  # the frame index after the last picture stamped
        self._origin: tuple[int, int] | None = None  # (coded video sequence, frame index of its order count 0)

    def after(self, skipped: int) -> int:
        """The next picture in display order, `skipped` lost just before it."""
        return self._stamped(self._next + skipped)

    def ordered(self, sequence: int, count: int) -> int:
        """The picture of order count `count` in the `sequence`-th coded video sequence."""
        if self._origin is None or self._origin[0] != sequence:
            self._origin = (sequence, self._next - count // self._steps)
        return self._stamped(self._origin[1] + count // self._steps)

    def _stamped(self, index: int) -> int:
        self._next = max(self._next, index + 1)
        return round(index * self._ticks)
