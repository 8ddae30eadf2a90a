"""MPEG-TS as IPTV sends it: 188-byte TS packets grouped 7 to a UDP datagram.

Reads a muxed transport stream packet by packet, maps every video TS packet to
the bytes of the elementary stream (and so to NAL units) it carries, and writes
a copy from which whole datagrams are missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

TS_PACKET = 188
PACKETS_PER_DATAGRAM = 7


class TransportError(ValueError):
    """The file is not a well-formed MPEG transport stream."""


@dataclass(frozen=True)
class TsPacket:
    index: int
    pid: int
    unit_start: bool
    payload_offset: int  # where the payload starts inside the 188 bytes
    raw: bytes


@dataclass
class TsAccessUnit:
    """One PES packet of the video PID (one coded picture) and the TS packets that carried it."""

    pts: int | None
    es: bytearray = field(default_factory=bytearray)
    # (ts packet index, first ES byte, end ES byte, first payload byte inside the TS packet)
    carriers: list[tuple[int, int, int, int]] = field(default_factory=list)


def read_ts_packets(stream: BinaryIO) -> Iterator[TsPacket]:
    """The packets of a transport stream as simulate-loss writes it (188 bytes each, none broken)."""
    index = 0
    while True:
        raw = stream.read(TS_PACKET)
        if not raw:
            return
        if len(raw) != TS_PACKET or raw[0] != 0x47:
            raise TransportError(f"lost TS sync at packet {index}")
        yield _ts_packet(index, raw)
        index += 1


def _ts_packet(index: int, raw: bytes) -> TsPacket:
    pid = ((raw[1] & 0x1F) << 8) | raw[2]
    adaptation = (raw[3] >> 4) & 3
    offset = 4
    if adaptation & 2:
        offset += 1 + raw[4]
    if not adaptation & 1:
        offset = TS_PACKET  # no payload
    return TsPacket(index, pid, bool(raw[1] & 0x40), min(offset, TS_PACKET), raw)


# How packets can be laid out in a file FFmpeg reads as MPEG-TS: (bytes per packet, bytes before its sync byte).
# M2TS (Blu-ray, AVCHD) puts a 4-byte timestamp before each packet, DVB captures may keep 16 bytes of parity after it.
PACKET_LAYOUTS = ((TS_PACKET, 0), (192, 4), (204, 0))
_READ_SIZE = 1 << 16


def scan_ts_packets(stream: BinaryIO) -> Iterator[TsPacket]:
    """The packets of any transport stream a demuxer reads: in any of PACKET_LAYOUTS, found again past bytes that
    are not packets (a capture's junk), and ending at a cut-off last packet."""
    head = stream.read(5 * 204 + 4)
    stream.seek(-len(head), 1)
    size, skip = next(((size, skip) for size, skip in PACKET_LAYOUTS
                       if len(head) >= skip + size and all(head[at] == 0x47 for at in range(skip, len(head), size))),
                      (TS_PACKET, 0))
    buffer, position, index = b"", 0, 0
    while True:
        if len(buffer) - position < skip + TS_PACKET:
            more = stream.read(_READ_SIZE)
            if not more:
                return
            buffer, position = buffer[position:] + more, 0
        elif buffer[position + skip] == 0x47:
            yield _ts_packet(index, buffer[position + skip:position + skip + TS_PACKET])
            position += size
            index += 1
        else:  # not a packet: on to the next sync byte that a packet's sync byte follows
            found = buffer.find(b"\x47", position + skip + 1)
            while 0 <= found and found + size < len(buffer) and buffer[found + size] != 0x47:
                found = buffer.find(b"\x47", found + 1)
            position = len(buffer) - skip - TS_PACKET + 1 if found < 0 else found - skip


def pes_pts(payload: bytes) -> int | None:
    """The PTS of a PES header (33 bits, 90 kHz), if the header has one."""
    if len(payload) < 14 or payload[:3] != b"\x00\x00\x01" or not payload[7] & 0x80:
        return None
    p = payload[9:14]
    return (((p[0] >> 1) & 7) << 30) | (p[1] << 22) | ((p[2] >> 1) << 15) | (p[3] << 7) | (p[4] >> 1)


def pes_header_length(payload: bytes) -> int:
    if len(payload) < 9 or payload[:3] != b"\x00\x00\x01":
        raise TransportError("PES packet without a start code")
    return 9 + payload[8]


def iter_access_units(path: Path, pid: int) -> Iterator[TsAccessUnit]:
    """Stream the PES packets of one PID with the TS packets that carried each byte."""
    current: TsAccessUnit | None = None
    with open(path, "rb") as stream:
        for packet in read_ts_packets(stream):
            if packet.pid != pid or packet.payload_offset >= TS_PACKET:
                continue
            payload = packet.raw[packet.payload_offset:]
            offset = packet.payload_offset
            if packet.unit_start:
                if current is not None:
                    yield current
                current = TsAccessUnit(pes_pts(payload))
                skip = pes_header_length(payload)
                payload, offset = payload[skip:], offset + skip
            if current is None:
                continue  # joined mid-PES
            start = len(current.es)
            current.es += payload
            current.carriers.append((packet.index, start, len(current.es), offset))
    if current is not None:
        yield current


@dataclass(frozen=True)
class PayloadHoles:
    """Where one PES packet lost TS packets: the length of its payload as it arrived, and the offsets in it
    where bytes are missing."""

    length: int
    offsets: tuple[int, ...]


def payload_holes(path: Path, pid: int) -> dict[int, PayloadHoles]:
    """By PTS, the PES packets of `pid` that lost TS packets, told by gaps in the continuity counter. A gap
    before a packet that starts a PES is taken for a loss at the end of the PES before it."""
    holes: dict[int, PayloadHoles] = {}
    pts, length, offsets, last_cc = None, 0, [], None

    def close() -> None:
        if pts is not None and offsets:
            holes[pts] = PayloadHoles(length, tuple(offsets))

    with open(path, "rb") as stream:
        for packet in scan_ts_packets(stream):
            if packet.pid != pid or packet.payload_offset >= TS_PACKET:
                continue
            raw, cc = packet.raw, packet.raw[3] & 0x0F
            discontinuity = (raw[3] & 0x20) and raw[4] and raw[5] & 0x80
            if cc == last_cc and not discontinuity:
                continue  # a duplicate packet
            lost = last_cc is not None and cc != (last_cc + 1) % 16 and not discontinuity
            last_cc = cc
            payload = raw[packet.payload_offset:]
            if lost:
                offsets.append(length)
            if packet.unit_start:
                close()
                try:
                    skip = pes_header_length(payload)
                except TransportError:
                    pts, length, offsets = None, 0, []
                    continue
                pts, length, offsets = pes_pts(payload), 0, []
                payload = payload[skip:]
            length += len(payload)
    close()
    return holes
