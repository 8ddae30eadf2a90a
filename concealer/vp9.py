"""VP9 frame headers, and which decoded pictures a lost frame has made worthless.

FFmpeg's VP9 decoder never refuses a frame whose past was lost: it decodes it with whatever
its reference slots and probability contexts hold. Measured on foreman_cif_vp9 (libvpx, one
keyframe): after one lost inter frame every later frame decodes to garbage, 8 to 14 dB
against the clean decode, because VP9 adapts its entropy-coding probabilities from frame to
frame and the next frames parse their data with the wrong ones. Which later frames are
affected follows from their uncompressed headers (VP9 spec, section 6.2): a frame is
`UNDECODABLE` when the probability context it loads was saved by a lost or undecodable frame
(or when it would predict its motion vectors from a lost frame's), and `DRIFTED` when it
parses correctly but predicts from a reference slot holding stale or wrong pixels. Keyframes,
intra-only frames with a context reset and error-resilient frames end the damage.

A lost frame's header is lost with it, so it is assumed to have refreshed every slot and
context: exact for libvpx's usual streams, pessimistic for one whose lost frame was a
non-reference frame.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from .bitstream import BitReader, BitstreamError

SLOTS = 8  # reference frame slots
CONTEXTS = 4  # saved probability contexts
SYNC_CODE = 0x498342
CS_RGB = 7


class Verdict(enum.Enum):
    CLEAN = "clean"
    DRIFTED = "drifted"  # parsed correctly, predicted from wrong pixels
    UNDECODABLE = "undecodable"  # parsed with the wrong probabilities or motion-vector candidates: garbage


@dataclass(frozen=True)
class FrameHeader:
    """The fields of a VP9 uncompressed header that say what the frame depends on and what it updates."""

    show_existing_frame: bool
    keyframe: bool
    show_frame: bool
    error_resilient: bool
    intra_only: bool
    reset_frame_context: int
    refresh_frame_flags: int
    ref_frame_idx: tuple[int, ...]
    refresh_frame_context: bool
    frame_context_idx: int

    @property
    def intra(self) -> bool:
        return self.keyframe or self.intra_only


def superframe_frames(data: bytes) -> list[bytes]:
    """The frames of a packet: several when it ends in a superframe index (a hidden frame and a shown one)."""
    if not data:
        return []
    marker = data[-1]
    if marker & 0xE0 == 0xC0:
        count = (marker & 7) + 1
        size_bytes = ((marker >> 3) & 3) + 1
        index_size = 2 + size_bytes * count
        if len(data) >= index_size and data[-index_size] == marker:
            frames, offset = [], 0
            index = data[-index_size + 1:-1]
            for i in range(count):
                size = int.from_bytes(index[i * size_bytes:(i + 1) * size_bytes], "little")
                if offset + size > len(data) - index_size:
                    raise BitstreamError("superframe index points past the packet")
                frames.append(data[offset:offset + size])
                offset += size
            return [f for f in frames if f]
    return [data]


def _color_config(reader: BitReader, profile: int) -> None:
    if profile >= 2:
        reader.skip(1)  # ten_or_twelve_bit
    if reader.u(3) != CS_RGB:
        reader.skip(1)  # color_range
        if profile in (1, 3):
            reader.skip(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        reader.skip(1)


def _frame_size_and_render_size(reader: BitReader) -> None:
    reader.skip(32)  # frame_width_minus_1, frame_height_minus_1
    if reader.flag():  # render_and_frame_size_different
        reader.skip(32)


def parse_frame_header(frame: bytes) -> FrameHeader:
    """Read a frame's uncompressed header up to frame_context_idx (VP9 spec 6.2)."""
    reader = BitReader(frame[:64])
    if reader.u(2) != 2:
        raise BitstreamError("not a VP9 frame (bad frame marker)")
    profile = reader.u(1)
    profile |= reader.u(1) << 1
    if profile == 3:
        reader.skip(1)
    if reader.flag():  # show_existing_frame: shows a slot, decodes nothing, changes nothing
        return FrameHeader(True, False, True, False, False, 0, 0, (), False, 0)
    keyframe = reader.u(1) == 0
    show_frame = reader.flag()
    error_resilient = reader.flag()
    intra_only, reset_frame_context, ref_frame_idx = False, 0, ()
    if keyframe:
        if reader.u(24) != SYNC_CODE:
            raise BitstreamError("VP9 keyframe without its sync code")
        _color_config(reader, profile)
        _frame_size_and_render_size(reader)
        refresh_frame_flags = 0xFF
    else:
        intra_only = False if show_frame else reader.flag()
        reset_frame_context = 0 if error_resilient else reader.u(2)
        if intra_only:
            if reader.u(24) != SYNC_CODE:
                raise BitstreamError("VP9 intra-only frame without its sync code")
            if profile > 0:
                _color_config(reader, profile)
            refresh_frame_flags = reader.u(8)
            _frame_size_and_render_size(reader)
        else:
            refresh_frame_flags = reader.u(8)
            indices = []
            for _ in range(3):
                indices.append(reader.u(3))
                reader.skip(1)  # ref_frame_sign_bias
            ref_frame_idx = tuple(indices)
            for _ in range(3):  # frame_size_with_refs
                if reader.flag():
                    break
            else:
                reader.skip(32)
            if reader.flag():  # render_and_frame_size_different
                reader.skip(32)
            reader.skip(1)  # allow_high_precision_mv
            if not reader.flag():  # is_filter_switchable
                reader.skip(2)
    if error_resilient:
        refresh_frame_context = False
    else:
        refresh_frame_context = reader.flag()
        reader.skip(1)  # frame_parallel_decoding_mode
    frame_context_idx = reader.u(2)
    return FrameHeader(False, keyframe, show_frame, error_resilient, intra_only, reset_frame_context,
                       refresh_frame_flags, ref_frame_idx, refresh_frame_context, frame_context_idx)


class ReferenceTracker:
    """Follows which reference slots and probability contexts hold what the encoder meant them to.

    Feed it every packet in decode order, and `lost()` for every frame that never arrived (or
    that the decoder refused); each packet's verdict says whether its picture can be trusted.
    """

    def __init__(self) -> None:
        self._slots = [True] * SLOTS  # True: the slot holds the picture the encoder put there
        self._contexts = [True] * CONTEXTS
        self._previous_lost = False

    def lost(self) -> None:
        self._slots = [False] * SLOTS
        self._contexts = [False] * CONTEXTS
        self._previous_lost = True

    def packet(self, data: bytes) -> Verdict:
        """The verdict on the packet's shown picture (its frames' worst); an unreadable one counts as lost."""
        try:
            headers = [parse_frame_header(f) for f in superframe_frames(data)]
        except BitstreamError:
            self.lost()
            return Verdict.UNDECODABLE
        verdicts = [self._frame(header) for header in headers]
        if Verdict.UNDECODABLE in verdicts:
            return Verdict.UNDECODABLE
        return Verdict.DRIFTED if Verdict.DRIFTED in verdicts else Verdict.CLEAN

    def _frame(self, header: FrameHeader) -> Verdict:
        if header.show_existing_frame:
            return Verdict.CLEAN if all(self._slots) else Verdict.DRIFTED
        if header.keyframe or header.error_resilient or header.reset_frame_context == 3:
            self._contexts = [True] * CONTEXTS
        elif header.intra_only and header.reset_frame_context == 2:
            self._contexts[header.frame_context_idx] = True
        # Motion vectors are predicted from the previous decoded frame's unless the frame is intra or
        # error resilient: after a loss that is the wrong frame, which changes what the data means.
        uses_previous_vectors = not (header.intra or header.error_resilient)
        if not self._contexts[header.frame_context_idx] or (self._previous_lost and uses_previous_vectors):
            verdict = Verdict.UNDECODABLE
        elif not header.intra and not all(self._slots[i] for i in header.ref_frame_idx):
            verdict = Verdict.DRIFTED
        else:
            verdict = Verdict.CLEAN
        if header.refresh_frame_context:
            self._contexts[header.frame_context_idx] = verdict is not Verdict.UNDECODABLE
        for slot in range(SLOTS):
            if header.refresh_frame_flags >> slot & 1:
                self._slots[slot] = verdict is Verdict.CLEAN
        self._previous_lost = verdict is Verdict.UNDECODABLE  # its motion vectors are garbage too
        return verdict
