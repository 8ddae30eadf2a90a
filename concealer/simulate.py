"""`simulate-loss`: damage a video the way a network does, and record exactly what was destroyed.

The stream is cut into network packets (RTP: one slice NAL unit per packet,
larger NAL units fragmented FU-A style; MPEG-TS: datagrams of 7 TS packets), a
seeded channel model drops packets, and bit errors corrupt slice payloads.
VP9 and AV1 have no slices a receiver could decode alone: their frames travel as
packet-sized fragments, and a frame missing any fragment is lost whole (receivers
drop incomplete frames).
Everything streams: one access unit at a time, memory flat in the video's length.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from . import transport
from .bitstream import (H264_SPS, BitstreamError, Codec, Framing, PictureGeometry, h264_geometry, hevc_geometry,
                        is_parameter_set, is_slice, nal_header_size, nal_type_of, nal_units,
                        parse_decoder_config, parse_h264_sps, parse_slice_header)
from .channel import BernoulliLoss, BitErrors, ChannelLog, GilbertElliottLoss, LossModel, PatternLoss
from .decode import frame_duration
from .encode import ENCODERS, EncoderSettings, add_video_encoder
from .errors import InputError, OutputError, UsageError
from .heap import tune_malloc
from .media import (AtomicOutputs, StreamCopies, add_stream_copy, copy_attachments, copy_stream_description,
                    is_copied, nominal_rate, open_output, main_video, open_video_input, plan_copies, rescale)
from .truth import GroundTruth, LossEvent, LossSummary, truth_paths

# FFmpeg's decoder names for the codecs simulate-loss can damage as they are (--as-is).
DAMAGEABLE_DECODERS = {"h264": Codec.H264, "hevc": Codec.HEVC, "vp9": Codec.VP9, "libvpx-vp9": Codec.VP9,
                       "av1": Codec.AV1, "libdav1d": Codec.AV1, "libaom-av1": Codec.AV1}
TS_SUFFIXES = (".ts", ".m2ts", ".mts")


@dataclass(frozen=True)
class LossOptions:
    """What the network does. `pattern` (0/1 text file) overrides `model`."""

    model: str = "gilbert"  # "bernoulli" or "gilbert"
    loss_rate: float = 0.05
    burst: float = 2.0  # mean loss-burst length in packets (gilbert)
    pattern: Path | None = None
    bit_error_rate: float = 0.0
    byte_burst: int = 0
    protect_params: bool = True
    protect_first_idr: bool = False
    damage_audio: bool = False
    seed: int = 0

    def validate(self) -> None:
        for name, value in (("--loss-rate", self.loss_rate), ("--bit-error-rate", self.bit_error_rate)):
            if not 0 <= value < 1:
                raise UsageError(f"{name} must be in [0, 1), got {value:g}")
        if self.model not in ("bernoulli", "gilbert"):
            raise UsageError(f"unknown loss model {self.model!r} (use bernoulli or gilbert)")
        if self.byte_burst < 0:
            raise UsageError(f"--byte-burst must be a positive number of bytes, got {self.byte_burst}")
        if self.byte_burst and not self.bit_error_rate:
            raise UsageError("--byte-burst sets the length of each bit-error burst: give --bit-error-rate too")

    def make_channel(self, rng: np.random.Generator) -> LossModel:
        if self.pattern is not None:
            return PatternLoss.from_file(self.pattern)
        if self.model == "bernoulli":
            return BernoulliLoss(self.loss_rate, rng)
        return GilbertElliottLoss(self.loss_rate, self.burst, rng)

    @property
    def requested_rate(self) -> float:
        return PatternLoss.from_file(self.pattern).rate if self.pattern is not None else self.loss_rate


@dataclass(frozen=True)
class PacketisationOptions:
    """How the stream reaches the network."""

    as_is: bool = False  # damage the input's own H.264/HEVC stream instead of re-encoding
    transport: str = "rtp"  # "rtp" (one NAL unit per packet, FU-A fragments) or "ts"
    packet_size: int = 1200  # bytes per RTP packet; x264 slice-max-size in re-encode mode
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    hevc_slices: int = 6

    def validate(self) -> None:
        if self.transport not in ("rtp", "ts"):
            raise UsageError(f"unknown transport {self.transport!r} (use rtp or ts)")
        if self.packet_size < 100:
            raise UsageError(f"--packet-size must be at least 100 bytes, got {self.packet_size}")
        if self.encoder.gop is not None and self.encoder.gop < 1:
            raise UsageError(f"--gop must be at least 1 frame, got {self.encoder.gop}")

    def reencode_settings(self, rate: Fraction) -> EncoderSettings:
        """The encoder settings of re-encode mode: packet-sized slices and a fixed GOP (2 s by default)."""
        settings = replace(self.encoder, gop=self.encoder.gop or max(1, round(2 * float(rate))))
        if settings.codec is Codec.H264:
            return replace(settings, slice_max_size=self.packet_size)
        if settings.codec is Codec.HEVC:
            return replace(settings, slices=self.hevc_slices, ctu=settings.ctu or 32)
        return settings


@dataclass(frozen=True)
class SimulationResult:
    damaged: Path
    reference: Path
    truth: Path
    truth_maps: Path
    summary: LossSummary
    streams_left_out: list[str] = field(default_factory=list)  # streams the outputs' format cannot hold


def default_reference_path(damaged: Path) -> Path:
    damaged = Path(damaged)
    return damaged.with_name(f"{damaged.stem}.reference{damaged.suffix}")


def simulate_loss(source: Path, damaged: Path, *, reference: Path | None = None, truth: Path | None = None,
                  loss: LossOptions = LossOptions(), packets: PacketisationOptions = PacketisationOptions(),
                  overwrite: bool = False) -> SimulationResult:
    """Write `damaged`, the clean stream it was cut from (`reference`) and the ground-truth sidecars."""
    loss.validate()
    packets.validate()
    damaged = Path(damaged)
    reference = Path(reference) if reference else default_reference_path(damaged)
    truth_json, truth_npz = truth_paths(damaged, truth)
    if packets.transport == "ts" and damaged.suffix.lower() not in TS_SUFFIXES:
        raise UsageError(f"--transport ts writes MPEG-TS: give the output a .ts name, not {damaged.name}")
    loss_rng, error_rng, audio_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(loss.seed).spawn(3))
    tune_malloc()  # the re-encode comes out the same every run (concealer.heap)
    with AtomicOutputs([damaged, reference, truth_json, truth_npz], overwrite,
                       inputs=[source, loss.pattern]) as outputs:
        source_container = open_video_input(source)
        try:
            run = _Simulation(source_container, loss, packets, loss_rng, error_rng, audio_rng)
            if packets.transport == "ts":
                run.write_streams(outputs, reference, None)
                ground_truth = run.lose_transport_packets(outputs[reference], outputs[damaged])
            else:
                ground_truth = run.write_streams(outputs, reference, damaged)
        finally:
            source_container.close()
        ground_truth.video.update(damaged=str(damaged), reference=str(reference))
        ground_truth.write(outputs[truth_json], outputs[truth_npz], truth_npz.name)
        outputs.commit()
    return SimulationResult(damaged, reference, truth_json, truth_npz, ground_truth.summary, run.copies.left_out)


@dataclass
class _FrameDamage:
    pts: int
    lost_blocks: np.ndarray  # (mb rows, mb cols) bool


class _Simulation:
    """One run: owns the channel models and accumulates the ground truth."""

    def __init__(self, source: av.container.InputContainer, loss: LossOptions, packets: PacketisationOptions,
                 loss_rng: np.random.Generator, error_rng: np.random.Generator, audio_rng: np.random.Generator):
        self.source = source
        self.video_in = main_video(source)
        self.copies = StreamCopies([], [], [])  # planned when the reference output is opened
        self.loss = loss
        self.packets = packets
        self.channel = loss.make_channel(loss_rng)
        self.channel_log = ChannelLog()
        self.audio_channel = loss.make_channel(audio_rng) if loss.damage_audio else None
        self.bit_errors = BitErrors(loss.bit_error_rate, loss.byte_burst, error_rng)
        self.width = self.video_in.codec_context.width
        self.height = self.video_in.codec_context.height
        if not self.width or not self.height:
            raise InputError(f"{source.name}: the video stream has no frame size (is it a real video?)")
        self.codec = self._output_codec()
        if not packets.as_is and self.codec.has_nal_units and (self.width % 2 or self.height % 2):
            raise InputError(f"{source.name}: {ENCODERS[self.codec]} cannot re-encode its odd picture size "
                             f"({self.width}x{self.height}) in 4:2:0; use --codec vp9, or --as-is for an H.264 or "
                             f"HEVC stream")
        if packets.encoder.interlaced and not packets.as_is and self.codec is not Codec.H264:
            raise UsageError(f"interlaced re-encoding is H.264's (MBAFF) here, not {self.codec.value}'s")
        if not self.codec.has_nal_units:
            if packets.transport == "ts":
                raise UsageError(f"{self.codec.value} is sent over RTP here; --transport ts carries H.264 and HEVC")
            if loss.bit_error_rate:
                raise UsageError(f"--bit-error-rate corrupts H.264/HEVC slices; {self.codec.value} frames are "
                                 "lost whole instead (use --loss-rate)")
        self.summary = LossSummary(model="pattern" if loss.pattern else loss.model,
                                   requested_loss_rate=loss.requested_rate)
        self.events: list[LossEvent] = []
        self.damaged_frames: list[_FrameDamage] = []
        self.lost_frames: list[int] = []
        self.packet_index = 0
        self.encoder_settings: EncoderSettings | None = None
        self.geometry: PictureGeometry | None = h264_geometry(self.width, self.height) \
            if self.codec is Codec.H264 else None
        self.framing = Framing.ANNEX_B
        self.length_size = 4
        self.time_base = Fraction(1, 1)
        # --as-is: the first packets of a B-frame stream in MKV come with no decode timestamp, held until one does.
        self.undated: list[av.Packet] = []

    # --- set-up -------------------------------------------------------------------------------
    def _output_codec(self) -> Codec:
        name = self.video_in.codec_context.name
        if not self.packets.as_is:
            return self.packets.encoder.codec
        if name not in DAMAGEABLE_DECODERS:
            raise InputError(f"{self.source.name}: --as-is can only damage H.264, HEVC, VP9 or AV1 streams, "
                             f"this one is {name}; drop --as-is to re-encode it")
        return DAMAGEABLE_DECODERS[name]

    def _read_configuration(self, extradata: bytes | None) -> None:
        """Framing and, for HEVC, geometry from the codec configuration (avcC/hvcC or Annex B)."""
        if not self.codec.has_nal_units:
            return
        config = parse_decoder_config(self.codec, extradata)
        if config is not None:
            self.framing, self.length_size = Framing.LENGTH_PREFIXED, config.length_size
            self._learn_parameter_sets(config.parameter_sets)
        elif extradata:
            data = bytes(extradata)
            self._learn_parameter_sets([data[n.payload_start:n.end]
                                        for n in nal_units(data, self.codec, Framing.ANNEX_B)])

    def _learn_parameter_sets(self, sets) -> None:
        if self.codec is Codec.H264:
            self._learn_h264_geometry(sets)
        if self.codec is not Codec.HEVC:
            return
        sps = next((s for s in sets if nal_type_of(self.codec, s[0]) == 33), None)
        pps = next((s for s in sets if nal_type_of(self.codec, s[0]) == 34), None)
        if sps is not None:
            try:
                self.geometry = hevc_geometry(sps, pps)
            except BitstreamError as exc:
                raise InputError(f"{self.source.name}: unreadable HEVC parameter sets ({exc})") from exc

    def _learn_h264_geometry(self, sets) -> None:
        """Whether slices address macroblocks or, in MBAFF pictures, vertical pairs of them: a slice lost from
        macroblock pair 110 of a CIF picture starts on macroblock row 10, not 5."""
        for unit in sets:
            if nal_type_of(self.codec, unit[0]) == H264_SPS:
                try:
                    sps = parse_h264_sps(unit)
                except (BitstreamError, IndexError) as exc:
                    raise InputError(f"{self.source.name}: unreadable H.264 sequence parameter set ({exc})") from exc
                self.geometry = h264_geometry(self.width, self.height, sps)

    # --- streaming ------------------------------------------------------------------------------
    def write_streams(self, outputs: AtomicOutputs, reference_path: Path,
                      damaged_path: Path | None) -> GroundTruth | None:
        """Mux the clean stream to `reference_path` and, access unit by access unit, its damaged copy
        with its ground truth (None without one: MPEG-TS loses packets of the muxed reference later), each
        through its temporary in `outputs`."""
        fmt = "mpegts" if self.packets.transport == "ts" else None
        with contextlib.ExitStack() as stack:
            suffix = Path(self.source.name).suffix
            reference = stack.enter_context(open_output(outputs[reference_path], fmt, shown_as=reference_path,
                                                        input_suffix=suffix))
            ref_video, ref_others = self._add_reference_streams(reference, reference_path)
            reference.start_encoding()
            self.time_base = ref_video.time_base
            self._read_configuration(self.video_in.codec_context.extradata if self.packets.as_is
                                     else ref_video.codec_context.extradata)
            damaged = stack.enter_context(open_output(outputs[damaged_path], fmt, shown_as=damaged_path,
                                                      input_suffix=suffix)) if damaged_path else None
            if damaged is not None:
                copy_attachments(self.copies, damaged)
                dmg_video = add_stream_copy(damaged, ref_video)
                dmg_others = {i: add_stream_copy(damaged, s) for i, s in ref_others.items()}
                damaged.start_encoding()

            def emit_video(packet: av.Packet) -> None:
                if damaged is not None:
                    pts = rescale(packet.pts, packet.time_base, ref_video.time_base)
                    damage = self.damage_access_unit if self.codec.has_nal_units else self.damage_frame
                    damaged_data = damage(bytes(packet), pts)
                    if damaged_data is not None:
                        _mux_copy(damaged, dmg_video, packet, damaged_data, ref_video.time_base)
                packet.stream = ref_video
                reference.mux(packet)

            timed = untimed = 0  # video packets with and without a timestamp (--as-is can place only the first)
            for packet in self.source.demux(self.video_in, *self.copies.streams):
                if packet.stream is self.video_in:
                    if packet.size:
                        timed, untimed = timed + (packet.dts is not None), untimed + (packet.dts is None)
                    self._feed_video(packet, ref_video, emit_video)
                elif is_copied(packet):
                    self._pass_through(packet, ref_others, dmg_others if damaged else {}, reference, damaged)
            if not self.packets.as_is:
                for out in ref_video.encode(None):
                    emit_video(out)
            elif untimed and not timed:
                raise InputError(f"{self.source.name}: its video packets carry no timestamps (a raw elementary "
                                 f"stream), which --as-is needs to keep the copies in step; drop --as-is to "
                                 f"re-encode it, or remux it into MP4 or MKV first")
        return self._ground_truth() if damaged is not None else None

    def _add_reference_streams(self, reference: av.container.OutputContainer, shown_as: Path):
        """The reference's streams; OutputError about `shown_as` (the file the user named) where its format cannot
        hold one."""
        try:
            return self._add_streams(reference)
        except OutputError as exc:  # the encoder's codec
            raise OutputError(f"{shown_as}: {exc}") from exc
        except ValueError as exc:  # a stream copied from the source
            raise OutputError(f"{shown_as}: {exc}; choose another container, e.g. .mp4 or .mkv") from exc

    def _add_streams(self, reference: av.container.OutputContainer):
        if self.packets.as_is:
            video = add_stream_copy(reference, self.video_in)
        else:
            rate = nominal_rate(self.video_in)
            self.encoder_settings = self.packets.reencode_settings(rate)
            video = add_video_encoder(reference, self.encoder_settings, width=self.width, height=self.height,
                                      rate=rate, time_base=self.video_in.time_base)
            copy_stream_description(self.video_in, video)
        self.copies = plan_copies(self.source, reference.format.name)
        others = {s.index: add_stream_copy(reference, s) for s in self.copies.streams}
        copy_attachments(self.copies, reference)
        return video, others

    def _feed_video(self, packet: av.Packet, encoder_stream, emit) -> None:
        if self.packets.as_is:
            if not packet.size:
                return
            if packet.dts is None:
                if packet.pts is not None:
                    self.undated.append(packet)  # MKV stores no dts: FFmpeg's demuxer guesses none for them
                return
            if self.undated:  # each, the keyframe among them, copied a frame's time apart before this first dated one
                step = max(1, round(frame_duration(self.video_in) or 1))
                for number, early in enumerate(self.undated):
                    early.dts = packet.dts - (len(self.undated) - number) * step
                    emit(early)
                self.undated.clear()
            emit(packet)
            return
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            return  # a damaged source frame: encode what the decoder could make of the rest
        for frame in frames:
            frame.pict_type = av.video.frame.PictureType.NONE
            for out in encoder_stream.encode(frame):
                emit(out)

    def _pass_through(self, packet, ref_streams, dmg_streams, reference, damaged) -> None:
        source_index = packet.stream.index
        data = bytes(packet)
        if damaged is not None:
            keep = True
            if self.audio_channel is not None and packet.stream.type == "audio":
                keep = not self.audio_channel.lose_next()
                if not keep:
                    pts = rescale(packet.pts, packet.time_base, dmg_streams[source_index].time_base) \
                        if packet.pts is not None else 0
                    self.events.append(LossEvent("lost", "audio", packet.stream.index, pts,
                                                 byte_range=(0, len(data))))
                    self.summary.audio_packets_lost += 1
            if keep:
                _mux_copy(damaged, dmg_streams[source_index], packet, data, packet.time_base)
        packet.stream = ref_streams[source_index]
        reference.mux(packet)

    # --- damage -----------------------------------------------------------------------------------
    def _parse_access_unit(self, data: bytes, framing: Framing) -> list:
        try:
            nals = nal_units(data, self.codec, framing, self.length_size)
        except BitstreamError as exc:
            raise InputError(f"{self.source.name}: broken NAL framing in the video stream ({exc})") from exc
        self._learn_parameter_sets([data[n.payload_start:n.end] for n in nals
                                    if is_parameter_set(self.codec, n.nal_type)])
        return nals

    def _protected(self, nal, first_access_unit: bool) -> bool:
        return (first_access_unit and self.loss.protect_first_idr) or \
            (self.loss.protect_params and is_parameter_set(self.codec, nal.nal_type))

    def _lose(self) -> bool:
        lost = self.channel.lose_next()
        self.channel_log.record(lost)
        return lost

    def _send_fragments(self, size: int, protected: bool) -> list[tuple[int, tuple[int, int]]]:
        """Send `size` bytes as packets of at most --packet-size bytes; the (packet index, byte range)
        of each the channel lost (none when `protected`: it never sees them)."""
        size_limit = self.packets.packet_size
        lost = []
        for start in range(0, max(size, 1), size_limit):
            packet = self.packet_index
            self.packet_index += 1
            if not protected and self._lose():
                lost.append((packet, (start, min(size, start + size_limit))))
        return lost

    def _corrupt(self, buffer: bytearray, nal_start: int, nal_end: int) -> tuple[int, ...]:
        """Bit errors in a NAL unit's payload (never its header); offsets in bits from the NAL start."""
        header = nal_header_size(self.codec)
        hits = self.bit_errors.corrupt(buffer, nal_start + header, nal_end)
        return tuple(8 * header + h for h in hits)

    def damage_access_unit(self, data: bytes, pts: int) -> bytes | None:
        """Send one access unit through the RTP channel; return what arrives (None: nothing decodable)."""
        first = self.summary.frames == 0
        nals = self._parse_access_unit(data, self.framing)
        ranges = self._slice_ranges(data, nals)
        lost: dict[int, list[tuple[int, tuple[int, int]]]] = {}
        corrupted: dict[int, tuple[int, tuple[int, ...]]] = {}
        arrived = bytearray()
        for index, nal in enumerate(nals):
            protected = self._protected(nal, first)
            fragments_lost = self._send_fragments(nal.end - nal.payload_start, protected)
            if fragments_lost:
                lost[index] = fragments_lost
                continue
            nal_bytes = bytearray(data[nal.start:nal.end])
            if index in ranges and not protected:
                offsets = self._corrupt(nal_bytes, nal.payload_start - nal.start, len(nal_bytes))
                if offsets:
                    corrupted[index] = (self.packet_index - 1, offsets)
            arrived += nal_bytes
        frame_lost = self._account(pts, nals, ranges, lost, corrupted)
        return None if frame_lost else bytes(arrived)

    def damage_frame(self, data: bytes, pts: int) -> bytes | None:
        """Send one VP9/AV1 frame through the channel in packet-sized fragments; None if any was lost."""
        protected = self.summary.frames == 0 and self.loss.protect_first_idr
        lost = [LossEvent("lost", "video", packet, pts, byte_range=byte_range)
                for packet, byte_range in self._send_fragments(len(data), protected)]
        self.events += lost
        self.summary.frames += 1
        if lost:
            self.summary.frames_hit += 1
            self.summary.frames_lost += 1
            self.damaged_frames.append(_FrameDamage(pts, np.ones(self._mb_shape(), dtype=bool)))
            self.lost_frames.append(pts)
        return None if lost else data

    def _account(self, pts: int, nals, ranges: dict[int, tuple[int, int]],
                 lost: dict[int, list[tuple[int, tuple[int, int]]]],
                 corrupted: dict[int, tuple[int, tuple[int, ...]]]) -> bool:
        """Record one access unit's events and lost macroblocks; True when no slice of it arrived."""
        lost_blocks = np.zeros(self._mb_shape(), dtype=bool)
        block = self._block_size()
        for index in sorted(lost):
            for packet, byte_range in lost[index]:
                self.events.append(LossEvent("lost", "video", packet, pts, index, nals[index].nal_type,
                                             byte_range, ranges.get(index), block))
            if index in ranges:
                self.summary.slices_lost += 1
                self._mark(lost_blocks, ranges[index])
        for index, (packet, offsets) in sorted(corrupted.items()):
            burst = max(1, self.loss.byte_burst)
            size = nals[index].end - nals[index].payload_start
            self.events.append(LossEvent("bit-error", "video", packet, pts, index, nals[index].nal_type,
                                         (offsets[0] // 8, min(size, offsets[-1] // 8 + burst)),
                                         ranges[index], block, offsets))
            self.summary.slices_corrupted += 1
            self.summary.bits_corrupted += len(offsets)
            self._mark(lost_blocks, ranges[index])
        self.summary.frames += 1
        if lost_blocks.any():
            self.summary.frames_hit += 1
            self.damaged_frames.append(_FrameDamage(pts, lost_blocks))
        frame_lost = bool(ranges) and all(index in lost for index in ranges)
        if frame_lost:
            self.summary.frames_lost += 1
            self.lost_frames.append(pts)
        return frame_lost

    def _slice_ranges(self, data: bytes, nals) -> dict[int, tuple[int, int]]:
        """Map each slice NAL's index to the [first, end) block range it codes in the clean stream.

        A lost independent HEVC slice segment takes its dependent segments with it, so its
        range runs to the next independent segment.
        """
        geometry = self.geometry
        if geometry is None:
            raise InputError(f"{self.source.name}: HEVC stream without a sequence parameter set")
        headers = {}
        for index, nal in enumerate(nals):
            if is_slice(self.codec, nal.nal_type):
                try:
                    headers[index] = parse_slice_header(data[nal.payload_start:nal.end], self.codec, geometry)
                except BitstreamError:
                    headers[index] = None  # unreadable header: the slice may lie anywhere
        order = sorted(headers)
        ranges = {}
        for position, index in enumerate(order):
            header = headers[index]
            if header is None:
                ranges[index] = (0, geometry.block_count)
                continue
            end = geometry.block_count
            for later in order[position + 1:]:
                following = headers[later]
                if following is not None and (header.dependent or not following.dependent):
                    end = following.first_block
                    break
            ranges[index] = (header.first_block, max(end, header.first_block + 1))
        return ranges

    def _block_size(self) -> int:
        """The slice address unit: H.264 macroblocks, HEVC CTUs; 16 for VP9/AV1, which lose whole frames."""
        return self.geometry.block_size if self.geometry is not None else 16

    def _mb_shape(self) -> tuple[int, int]:
        return (-(-self.height // 16), -(-self.width // 16))

    def _mark(self, lost_blocks: np.ndarray, slice_range: tuple[int, int]) -> None:
        """Mark the 16x16 macroblocks covered by a slice's block range."""
        geometry = self.geometry
        blocks = np.zeros(geometry.block_count, dtype=bool)
        blocks[slice_range[0]:slice_range[1]] = True
        grid = blocks.reshape(geometry.blocks_high, geometry.blocks_wide)
        grid = grid.repeat(geometry.block_height // 16, axis=0).repeat(geometry.block_size // 16, axis=1)
        rows, cols = lost_blocks.shape
        lost_blocks |= grid[:rows, :cols]

    # --- MPEG-TS ------------------------------------------------------------------------------------
    def lose_transport_packets(self, clean_ts: Path, damaged_ts: Path) -> GroundTruth:
        """Drop 7-packet datagrams from the muxed clean TS, then record which NAL units they hit."""
        with av.open(str(clean_ts)) as probe:
            video_pid = main_video(probe).id
            exposed_pids = {s.id for s in probe.streams.audio} if self.loss.damage_audio else set()
        self.time_base = Fraction(1, 90000)
        protected_packets: set[int] = set()
        patches: dict[int, tuple[int, bytes]] = {}
        units = []
        for number, au in enumerate(transport.iter_access_units(clean_ts, video_pid)):
            units.append(self._scan_ts_access_unit(au, number == 0, protected_packets, patches))
        dropped: dict[int, int] = {}  # ts packet index -> datagram index
        audio_pts: dict[int, int] = {}
        with open(clean_ts, "rb") as source, open(damaged_ts, "wb") as sink:
            datagram: list[transport.TsPacket] = []
            for packet in transport.read_ts_packets(source):
                datagram.append(packet)
                if len(datagram) == transport.PACKETS_PER_DATAGRAM:
                    self._send_datagram(datagram, video_pid, exposed_pids, protected_packets, patches,
                                        dropped, audio_pts, sink)
                    datagram = []
            if datagram:
                self._send_datagram(datagram, video_pid, exposed_pids, protected_packets, patches,
                                    dropped, audio_pts, sink)
        for pts, nals, ranges, carriers, corrupted in units:
            lost: dict[int, list[tuple[int, tuple[int, int]]]] = {}
            for ts_index, es_start, es_end, _ in carriers:
                if ts_index not in dropped:
                    continue
                for index, nal in enumerate(nals):
                    if nal.start < es_end and es_start < nal.end:
                        lost.setdefault(index, []).append(
                            (dropped[ts_index], (max(es_start, nal.payload_start) - nal.payload_start,
                                                 min(es_end, nal.end) - nal.payload_start)))
            self._account(pts, nals, ranges, {i: _merge_ranges(v) for i, v in lost.items()}, corrupted)
        return self._ground_truth()

    def _scan_ts_access_unit(self, au: transport.TsAccessUnit, first: bool, protected_packets: set[int],
                             patches: dict[int, tuple[int, bytes]]):
        """Find which TS packets carry protected NAL units and draw this picture's bit errors."""
        es = bytes(au.es)
        nals = self._parse_access_unit(es, Framing.ANNEX_B)
        ranges = self._slice_ranges(es, nals)
        damaged = bytearray(es)
        corrupted = {}
        for index, nal in enumerate(nals):
            if self._protected(nal, first):
                protected_packets.update(t for t, s, e, _ in au.carriers if s < nal.end and nal.start < e)
            elif index in ranges:
                offsets = self._corrupt(damaged, nal.payload_start, nal.end)
                if offsets:
                    carrier = next(t for t, s, e, _ in au.carriers if s <= nal.payload_start + offsets[0] // 8 < e)
                    corrupted[index] = (carrier // transport.PACKETS_PER_DATAGRAM, offsets)
        if corrupted:
            for ts_index, start, end, payload_offset in au.carriers:
                if damaged[start:end] != es[start:end]:
                    patches[ts_index] = (payload_offset, bytes(damaged[start:end]))
        return au.pts, nals, ranges, au.carriers, corrupted

    def _send_datagram(self, datagram, video_pid, exposed_pids, protected_packets, patches, dropped,
                       audio_pts, sink) -> None:
        index = datagram[0].index // transport.PACKETS_PER_DATAGRAM
        lost = self._lose()
        for packet in datagram:
            if packet.pid in exposed_pids and packet.unit_start:
                audio_pts[packet.pid] = transport.pes_pts(packet.raw[packet.payload_offset:]) or 0
            exposed = (packet.pid == video_pid and packet.index not in protected_packets) or \
                packet.pid in exposed_pids
            if lost and exposed:
                dropped[packet.index] = index
                if packet.pid != video_pid:
                    self.events.append(LossEvent("lost", "audio", index, audio_pts.get(packet.pid, 0),
                                                 byte_range=(packet.payload_offset, transport.TS_PACKET)))
                    self.summary.audio_packets_lost += 1
                continue
            raw = packet.raw
            if packet.index in patches:
                offset, payload = patches[packet.index]
                raw = raw[:offset] + payload + raw[offset + len(payload):]
            sink.write(raw)

    def _ground_truth(self) -> GroundTruth:
        self.channel_log.close_burst()
        self.summary.packets_sent = self.channel_log.sent
        self.summary.packets_lost = self.channel_log.lost
        self.summary.burst_histogram = dict(self.channel_log.bursts)
        rows, cols = self._mb_shape()
        return GroundTruth(
            video={"codec": self.codec.value, "width": self.width, "height": self.height,
                   "time_base": [self.time_base.numerator, self.time_base.denominator],
                   "mode": "as-is" if self.packets.as_is else "re-encode", "transport": self.packets.transport,
                   "block_size": self._block_size(),
                   "macroblock_pairs": self.geometry is not None and self.geometry.macroblock_pairs},
            options={"loss": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.loss).items()},
                     "packet_size": self.packets.packet_size,
                     "encoder": None if self.encoder_settings is None else {
                         k: (v.value if isinstance(v, Codec) else v)
                         for k, v in asdict(self.encoder_settings).items()}},
            summary=self.summary, events=self.events, lost_frames=self.lost_frames,
            mb_pts=np.array([f.pts for f in self.damaged_frames], dtype=np.int64),
            mb_lost=np.array([f.lost_blocks for f in self.damaged_frames], dtype=bool).reshape(-1, rows, cols))


def _mux_copy(container, stream, template: av.Packet, data: bytes, time_base: Fraction) -> None:
    """Mux `data` as a new packet with the timing and flags of `template`."""
    packet = av.Packet(data)
    packet.pts, packet.dts, packet.duration = template.pts, template.dts, template.duration
    packet.time_base = template.time_base if template.time_base is not None else time_base
    packet.is_keyframe = template.is_keyframe
    packet.stream = stream
    container.mux(packet)


def _merge_ranges(hits: list[tuple[int, tuple[int, int]]]) -> list[tuple[int, tuple[int, int]]]:
    """Join the byte ranges of one NAL unit lost in the same datagram into one event."""
    merged: list[tuple[int, tuple[int, int]]] = []
    for packet, (start, end) in hits:
        if merged and merged[-1][0] == packet and merged[-1][1][1] >= start:
            merged[-1] = (packet, (merged[-1][1][0], max(end, merged[-1][1][1])))
        else:
            merged.append((packet, (start, end)))
    return merged
