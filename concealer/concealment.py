"""Concealers: fill the damaged macroblocks of a frame, behind one small interface.

Work happens on the YUV 4:2:0 planes the decoder produced, so that a repair never
costs a colour conversion: luma at full resolution, chroma at half.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import av
import cv2
import numpy as np

from .decode import plane_samples
from .detection import MB, DamagedFrame, DamageLabel, DamageMap, blocks_to_pixels, plane_boxes
from .errors import UsageError
from .motion import KnownMotion, Warp, estimate_warp, fill_motion

INPAINT_RADIUS = 3


@dataclass(frozen=True)
class Picture:
    """One 8-bit YUV 4:2:0 picture as three planes (luma HxW, chroma ceil(H/2) x ceil(W/2)).

    It is the concealers' working space whatever the video's own format: 4:4:4, 4:2:2 or 10-bit
    frames are converted to it, and `to_frame` given the decoded original puts back only the
    samples a repair changed, so every undamaged sample leaves in its own format untouched.
    """

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @classmethod
    def from_frame(cls, frame: av.VideoFrame) -> Picture:
        frame = _reformat(frame, _working_format(frame.format.name))
        return cls(*(plane_samples(frame, index).copy() for index in range(3)))

    def to_frame(self, format: str = "yuv420p", original: tuple[av.VideoFrame, Picture] | None = None
                 ) -> av.VideoFrame:
        """This picture as a new frame in pixel `format`. `original`: the decoded frame it was repaired
        from and that frame's working copy; the samples this picture did not change are taken from it."""
        height, width = self.y.shape
        working = _working_format(format)
        frame = av.VideoFrame(width, height, working)
        for index, samples in enumerate((self.y, self.u, self.v)):
            plane_samples(frame, index)[...] = samples
        frame = _reformat(frame, format)
        if original is None or not keeps_decoded_samples(original[0].format.name, format):
            return frame  # the working copy was the decoded frame itself: nothing more to keep
        decoded_frame, decoded = original
        decoded_frame = _reformat(decoded_frame, format)
        changed = self.changed_from(decoded)
        merged = av.VideoFrame(width, height, format)
        for index in range(len(merged.planes)):
            kept = plane_samples(decoded_frame, index)
            if index < 3:  # Y, U, V (or G, B, R); an alpha plane is never repaired
                kept = np.where(_block_any(changed, kept.shape), plane_samples(frame, index), kept)
            plane_samples(merged, index)[...] = kept
        return merged

    def changed_from(self, other: Picture) -> np.ndarray:
        """HxW bool: where this picture differs from `other` (a chroma change marks its 2x2 luma block)."""
        height, width = self.y.shape
        chroma = (self.u != other.u) | (self.v != other.v)
        return (self.y != other.y) | np.repeat(np.repeat(chroma, 2, 0), 2, 1)[:height, :width]

    def planes_with_masks(self, mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(plane, mask at that plane's resolution) for Y, U and V; masks are macroblock-aligned,
        so subsampling the luma mask gives the chroma mask exactly."""
        chroma = mask[::2, ::2]
        return [(self.y, mask), (self.u, chroma), (self.v, chroma)]

    def to_rgb(self) -> np.ndarray:
        """HxWx3 uint8 RGB (BT.601), what the networks were trained on."""
        height, width = self.y.shape
        luma = np.pad(self.y, ((0, height % 2), (0, width % 2)), mode="edge")
        stacked = np.concatenate([luma.ravel(), self.u.ravel(), self.v.ravel()]).reshape(-1, luma.shape[1])
        return cv2.cvtColor(stacked, cv2.COLOR_YUV2RGB_I420)[:height, :width]

    def with_rgb(self, rgb: np.ndarray, mask: np.ndarray) -> Picture:
        """This picture with its `mask` pixels taken from an RGB image of the same size."""
        height, width = self.y.shape
        even = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        yuv = cv2.cvtColor(even, cv2.COLOR_RGB2YUV_I420).ravel()
        luma_size, chroma_size = even.shape[0] * even.shape[1], self.u.size
        planes = (yuv[:luma_size].reshape(even.shape[:2])[:height, :width],
                  yuv[luma_size:luma_size + chroma_size].reshape(self.u.shape),
                  yuv[luma_size + chroma_size:].reshape(self.v.shape))
        return self.pasted(planes, mask)

    def mixed(self, other: Picture, mask: np.ndarray, weight: float) -> Picture:
        """This picture with its `mask` samples replaced by `weight` x its own + (1 - `weight`) x `other`'s."""
        return self.pasted([cv2.addWeighted(mine, weight, theirs, 1 - weight, 0)
                            for mine, theirs in zip((self.y, self.u, self.v), (other.y, other.u, other.v))], mask)

    def pasted(self, source: list[np.ndarray], mask: np.ndarray) -> Picture:
        """This picture with its `mask` pixels taken from `source` (Y, U, V planes of the same sizes)."""
        planes = []
        for (plane, plane_mask), filler in zip(self.planes_with_masks(mask), source):
            repaired = plane.copy()
            repaired[plane_mask] = filler[plane_mask]
            planes.append(repaired)
        return Picture(*planes)


def keeps_decoded_samples(decoded_format: str, output_format: str) -> bool:
    """Whether a repaired picture going out in `output_format` takes the samples its repair left alone from
    the decoded frame (in `decoded_format`): only when its working copy was converted from that frame."""
    return decoded_format != _working_format(output_format)


def _working_format(format: str) -> str:
    """8-bit 4:2:0 with the same range convention, so that converting to it never rescales the range."""
    return "yuvj420p" if format.startswith("yuvj") else "yuv420p"


def _reformat(frame: av.VideoFrame, format: str) -> av.VideoFrame:
    """`frame` in pixel `format`, its samples' range kept as it is: a yuvj format and its yuv twin
    hold the same samples (swscale would otherwise rescale full range to limited)."""
    if frame.format.name == format:
        return frame
    full = frame.format.name.startswith("yuvj") or frame.color_range == 2
    sample_range = "JPEG" if full else "MPEG"
    return frame.reformat(format=format, src_color_range=sample_range, dst_color_range=sample_range)


def _block_any(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`mask` reduced to a plane of `shape` (subsampled chroma): a sample is set if any pixel it covers is."""
    height, width = mask.shape
    rows, cols = shape
    step_y, step_x = -(-height // rows), -(-width // cols)
    padded = np.zeros((rows * step_y, cols * step_x), bool)
    padded[:height, :width] = mask
    return padded.reshape(rows, step_y, cols, step_x).any(axis=(1, 3))


class Neighbours:
    """What a concealer may look at besides the damaged picture itself.

    The next frame is converted only when a concealer asks for it: most never do."""

    def __init__(self, previous: Picture | None = None, following: DamagedFrame | None = None,
                 before_previous: Picture | None = None, decoder_concealed: bool = False,
                 after: DamagedFrame | None = None, reordered: bool = False):
        self.previous = previous  # the last repaired picture
        self.before_previous = before_previous  # the one before it, of the same scene
        self.decoder_concealed = decoder_concealed  # its holes hold a fill of their own (DECODER_CONCEALING_CODECS)
        self._following = None if following is None or following.frame.missing else following
        # A B picture's next I or P picture: decoded before it, so never predicted from its holes.
        self._after = None if after is None or after.frame.missing else after
        # B-frames reorder the stream: the next picture shown may have been predicted from further back.
        self._reordered = reordered

    def fill_motion(self, picture: Picture, mask: np.ndarray) -> Warp | None:
        """How the previous picture best moves onto `picture`'s `mask` (`motion.fill_motion`), or None
        when there is no previous picture or no intact pixel of `picture` to measure the motion on."""
        if self.previous is None or mask.all():
            return None
        earlier = None if self.before_previous is None else self.before_previous.y
        return fill_motion(self.previous.y, picture.y, mask, earlier, self._following_motion())

    def _following_motion(self) -> KnownMotion | None:
        """The next picture's decoder vectors into the one being repaired, known where it was predicted
        from the past and its data arrived (a lost block's vector is FFmpeg's guess)."""
        motion = None if self._following is None else self._following.motion.smoothed_pixel_motion()
        if motion is None:
            return None
        dx, dy, predicted = motion
        picture = self._following.frame.picture
        lost = self._following.damage.pixel_mask(picture.height, picture.width, DamageLabel.LOST)
        return KnownMotion(Warp(dx, dy), predicted & ~lost, one_interval=not self._reordered)

    @functools.cached_property
    def following(self) -> Picture | None:
        """The next picture as decoded (its own damage not yet repaired)."""
        return Picture.from_frame(self._following.frame.picture) if self._following else None

    @functools.cached_property
    def after(self) -> Picture | None:
        """The I or P picture after a B picture, as decoded; None for other pictures."""
        return None if self._after is None else Picture.from_frame(self._after.frame.picture)

    @functools.cached_property
    def following_damaged(self) -> np.ndarray | None:
        """The next picture's damaged pixels (HxW bool)."""
        if self._following is None:
            return None
        picture = self._following.frame.picture
        return self._following.damage.pixel_mask(picture.height, picture.width)


# Mean absolute luma difference over a frame's intact pixels above which the previous picture
# may show another scene (bikes_640x272: consecutive frames differ by at most 18, its
# scene cuts by 44-72). Across a cut, temporal concealers have nothing to copy from.
SCENE_CUT_MAD = 30.0
# Beyond SCENE_CUT_MAD, the difference left once the previous picture is moved onto this one by optical flow,
# above which it does show another scene. Flames change by more than SCENE_CUT_MAD from one picture to the next
# and still follow their flow: consecutive pictures of fire2_720p differ by up to 34, by 5-12 once moved, where
# bikes' cuts stay at 25-65 (and a previous picture repaired too wrongly to copy from, in bbb_720p at 5% loss
# with three B-frames, at 14.6). Against SCENE_CUT_MAD alone, `conceal` on fire2 (its 25 frames looped to 150)
# at 5 / 10% loss: 29.87 / 26.62 -> 31.87 / 27.36 dB, with three B-frames 29.46 / 26.44 -> 29.94 / 26.64;
# another seed +0.29 / +0.22; bikes, chaplin and bbb (150 frames) with and without B-frames at 3-20% unchanged.
SCENE_CUT_MOVED_MAD = 12.0


def same_scene(previous: np.ndarray, luma: np.ndarray, mask: np.ndarray, warp: Warp | None = None) -> bool:
    """Whether `previous` shows the scene `luma` does (luma planes), judged on the pixels `mask` leaves intact;
    `warp` is `estimate_warp(previous, luma, mask)` where the caller has it already."""
    intact = ~mask
    if not intact.any():
        return True  # nothing to judge by: a whole lost picture continues the last one
    if float(cv2.absdiff(previous, luma)[intact].mean()) <= SCENE_CUT_MAD:
        return True
    moved = (warp or estimate_warp(previous, luma, mask)).apply(previous)
    return float(cv2.absdiff(moved, luma)[intact].mean()) <= SCENE_CUT_MOVED_MAD


class Concealer(Protocol):
    """Fills the masked pixels of `picture`, perhaps with help from its neighbours."""

    name: str

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture: ...


class FfmpegConcealer:
    """FFmpeg's own concealment only: the decoded picture as it is (the baseline)."""

    name = "ffmpeg"

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture:
        return picture


class CopyConcealer:
    """Frame copy: damaged blocks take the co-located pixels of the previous repaired picture."""

    name = "copy"

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture:
        if neighbours.previous is None:
            return picture
        previous = neighbours.previous
        return picture.pasted([previous.y, previous.u, previous.v], mask)


# Codecs whose decoded pictures hold a fill of their lost blocks, a second one to weigh against ours: FFmpeg's
# error resilience guesses motion vectors from the neighbours for H.264 and MPEG-1/2/4; for HEVC, whose FFmpeg
# decoder conceals nothing, the stream repair's substitute slices skip from the neighbours' merge candidates
# (stream_repair). Weighing HEVC's too, on the training clips damaged as HEVC (first 100 frames): bikes 3 / 10%
# 22.89 / 18.11 -> 22.94 / 18.17 dB, chaplin 30.76 / 20.60 -> 30.95 / 20.66. VP9 and AV1 lose whole frames.
DECODER_CONCEALING_CODECS = ("h264", "mpeg1video", "mpeg2video", "mpeg4", "h263", "hevc")
# How much better (as a fraction of ours) the decoder's fill of a macroblock must match its intact surroundings to be
# kept (`with_decoder_fill`). Chosen on the training clips (`conceal` with defaults; fire2 720p at 5% and 10% loss,
# bbb 720p at 10% and 5%, bikes and chaplin at 3 / 10 / 20%), summed gain over never keeping it: +4.13 dB at 0, +4.84
# at 0.3, +4.91 at 0.5, +4.10 at 0.8. At 0.5: fire2 +1.08 / +2.07, bbb +0.38 / -0.14, bikes +0.53 / +0.30 / +0.37,
# chaplin +0.13 / +0.04 / +0.15. Judging by the step from the two pixels outside rather than the one (extrapolated) or
# both measures summed chose no better. The mean of the two fills as a third candidate added +0.97 dB summed over the
# same ten (fire2 +0.10 / +0.11, bbb +0.54 / +0.04, bikes +0.01 / +0.00 / -0.05, chaplin +0.05 / +0.09 / +0.09) and
# -0.07 dB over fire2 at 640x360 (30 frames, 5% loss, seeds 1-8; seed 4 -0.82); held to a margin of 0.15 as well,
# +0.62 and +0.18. The co-located pixels of the previous picture as a fourth candidate were chosen for 2% of the lost
# blocks or fewer (bikes, chaplin, fire2, bbb), so not kept.
DECODER_FILL_ADVANTAGE = 0.5


class FillShare:
    """How much of each lost block to take from the concealer's fill rather than FFmpeg's concealment of it,
    learned at each keyframe. The two err in partly different ways, so on clips whose fills are noisy a mix
    errs less than either, while where the fill is near exact any share of FFmpeg's costs. A keyframe shows
    which: moved onto the picture before it, it stands in for that picture's truth, and the share that would
    have brought the two repairs of its damage (ours, and FFmpeg's decode that propagated its own
    concealment) closest to it follows in closed form (with B-frames, the I or P picture before the keyframe's
    B pictures stands in for the last). Pooled over the keyframes seen; until one is, the fill is taken whole."""

    # Pixels where the two repairs must differ for a keyframe to count.
    MIN_PIXELS = 1024
    # The least share taken: a keyframe is a noisy stand-in for the truth (chaplin at 3% learned 0.50-0.63 where
    # 0.7-0.8 for the whole clip measured best). Training clips (`conceal` with defaults), against the fill taken
    # whole: without B-frames, bikes and chaplin at 3 / 10 / 20% +0.00 / +0.00 / +0.11 and +0.11 / +0.09 / +0.11 dB
    # (from 33.63 / 24.80 / 21.75 and 32.24 / 27.12 / 21.90), bbb and fire2 720p (150 frames) at 5 / 10% -0.02 /
    # -0.03 and -0.01 / +0.28; with three B-frames, bikes +0.14 / +0.07 / +0.10, chaplin +0.01 / +0.03 / +0.00, bbb
    # 5% -0.02, fire2 10% -0.01. With a floor of 0.5 (learning then only from the picture just before a keyframe,
    # without B-frames): +0.59 summed over the first ten against +0.71 at 0.7 (bikes 20% +0.32, chaplin 3% -0.10,
    # fire2 5% -0.09). The same mix at 0.75 everywhere, learned from nothing, measured +0.60 over those ten (bbb 5%
    # -0.35) and cost foreman 1.8 dB at 3% loss.
    LEAST = 0.7

    # A keyframe with more of its pixels damaged than this is no stand-in.
    MOSTLY_ARRIVED = 0.5

    def __init__(self) -> None:
        self.share = 1.0
        self._towards = 0.0  # pooled <FFmpeg's error, FFmpeg's - ours>, in units of the share in force
        self._spread = 0.0  # pooled |ours - FFmpeg's|^2, likewise
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the last damaged I or P picture's

    def see(self, ours: np.ndarray, ffmpegs: np.ndarray, damage: DamageMap, keyframe: bool) -> None:
        """Take each I or P picture in display order: our repair's and FFmpeg's luma, and its damage map.
        A keyframe is weighed against the last one before it, if that was damaged."""
        if keyframe:
            if self._last is not None and (damaged := damage.pixel_mask(*ours.shape)).mean() < self.MOSTLY_ARRIVED:
                self.learn(*self._last, ffmpegs, damaged)
            self._last = None
        else:  # the pixel mask is made only for the pictures kept: this runs on every I or P picture
            self._last = (ours, ffmpegs, damage.pixel_mask(*ours.shape)) if damage.damaged.any() else None

    def learn(self, ours: np.ndarray, ffmpegs: np.ndarray, damaged: np.ndarray, keyframe: np.ndarray,
              keyframe_damaged: np.ndarray) -> None:
        """Weigh the repairs of a picture before a keyframe (luma planes, `damaged` its HxW damage mask) against
        the keyframe's luma moved onto it, where the keyframe itself arrived (`keyframe_damaged` not)."""
        differ = damaged & ~keyframe_damaged & (ours != ffmpegs)
        if np.count_nonzero(differ) < self.MIN_PIXELS or damaged.all():
            return  # too little to weigh
        warp = estimate_warp(keyframe, ours, damaged)
        if not same_scene(keyframe, ours, damaged, warp):
            return  # a keyframe at a scene cut: no stand-in for the truth
        truth = warp.apply(keyframe)[differ].astype(np.float32)
        theirs_off = ffmpegs[differ].astype(np.float32) - truth
        gap = (ffmpegs[differ].astype(np.float32) - ours[differ]) / self.share  # FFmpeg's - our whole fill's
        self._towards += float(np.dot(theirs_off, gap))
        self._spread += float(np.dot(gap, gap))
        self.share = float(np.clip(self._towards / self._spread, self.LEAST, 1.0))


def side_mismatch(luma: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Per macroblock of `blocks` (the damaged ones, rows x cols bool), the mean absolute luma step across its
    edges with intact macroblocks (the classic boundary-matching measure of a concealment); inf where it has
    no intact neighbour to be judged by."""
    rows, cols = blocks.shape
    padded = np.empty((rows * MB, cols * MB), np.float32)
    height, width = luma.shape
    padded[:height, :width] = luma
    padded[height:, :width] = padded[height - 1:height, :width]  # a partial last row or column repeats its edge
    padded[:, width:] = padded[:, width - 1:width]
    across_rows = np.abs(padded[MB::MB] - padded[MB - 1:-1:MB]).reshape(rows - 1, cols, MB).mean(2)
    across_cols = np.abs(padded[:, MB::MB] - padded[:, MB - 1:-1:MB]).reshape(rows, MB, cols - 1).mean(1)
    total = np.zeros((rows, cols), np.float32)
    sides = np.zeros((rows, cols), np.float32)
    for step, here, there in ((across_rows, np.s_[1:], np.s_[:-1]), (across_rows, np.s_[:-1], np.s_[1:])):
        intact = ~blocks[there]
        total[here] += np.where(intact, step, 0)
        sides[here] += intact
    for step, here, there in ((across_cols, np.s_[:, 1:], np.s_[:, :-1]), (across_cols, np.s_[:, :-1], np.s_[:, 1:])):
        intact = ~blocks[there]
        total[here] += np.where(intact, step, 0)
        sides[here] += intact
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sides > 0, total / sides, np.inf)


def with_decoder_fill(filled: Picture, decoded: Picture, mask: np.ndarray) -> Picture:
    """`filled` with each macroblock of `mask` taken from whichever of our fill, the decoder's concealment (in
    `decoded`) and the mean of the two joins its intact surroundings best (`side_mismatch`), the decoder's alone
    having to do so clearly better (DECODER_FILL_ADVANTAGE): where a motion model of ours guesses wrong (fire,
    a limb swinging through a lost slice) the encoder's own vectors of the blocks around often guess right,
    and where both guess half right their mean errs least."""
    height, width = mask.shape
    rows, cols = -(-height // MB), -(-width // MB)
    if rows < 2 or cols < 2:
        return filled
    blocks = _block_any(mask, (rows, cols))
    mean = Picture(*(((ours.astype(np.uint16) + theirs + 1) // 2).astype(np.uint8)
                     for ours, theirs in ((filled.y, decoded.y), (filled.u, decoded.u), (filled.v, decoded.v))))
    mismatch = side_mismatch(filled.y, blocks)
    choice = np.argmin([mismatch, side_mismatch(decoded.y, blocks) / (1 - DECODER_FILL_ADVANTAGE),
                        side_mismatch(mean.y, blocks)], axis=0)
    choice[~np.isfinite(mismatch)] = 0  # nothing intact to judge by: ours stays
    for index, candidate in ((1, decoded), (2, mean)):
        chosen = blocks & (choice == index)
        if chosen.any():
            filled = filled.pasted([candidate.y, candidate.u, candidate.v],
                                   mask & blocks_to_pixels(chosen, MB, height, width))
    return filled


class FlowConcealer:
    """Motion-compensated copy: damaged blocks take the previous repaired picture moved along
    `motion.fill_motion` (the flow around the holes carried in, averaged with the flow of the same place
    one frame earlier). Measured (lost blocks from the truth, the fill written into the decoder's
    references), against the carried flow alone: foreman 3% 34.77 -> 38.07 dB, 10% 27.93 -> 29.63;
    chaplin 3% 31.75 -> 31.43, 10% 25.89 -> 26.45; bikes 3% 29.49 -> 29.76, 10% 21.20 -> 21.53. The
    earlier flow alone scored 37.48 dB on foreman 3% and 30.76 dB on chaplin 3%. In `conceal` (blind
    detection, drift carried): foreman 35.14 -> 37.21 / 29.06 -> 30.16 / 18.37 -> 18.47 dB at 3 / 10 /
    20% loss, chaplin 31.91 -> 32.08 / 25.99 -> 26.33 / 21.14 -> 21.18, bikes 30.86 -> 30.81 / 23.70 ->
    24.15 / 20.44 -> 20.69, carphone unchanged. The earlier flow is estimated over the rows the holes
    span rather than the whole picture: bbb 720p at 5% loss took 3.70 times a plain decode + encode
    with it on whole pictures, 3.34 times on the rows (foreman 3%: 37.21 / 37.22 dB). Where the next
    picture's decoder vectors agree with the motion before the hole, they are averaged in (`fill_motion`,
    VECTOR_AGREEMENT): lost pixels of foreman (truth, `benchmarks.lost_pixels`) 32.04 / 29.59 -> 32.82 /
    31.03 dB at 3 / 10% loss; `conceal` with defaults: foreman 37.07 / 30.20 / 18.43 -> 38.19 / 31.44 /
    18.45 dB at 3 / 10 / 20%, bikes 32.58 / 24.74 / 21.41 -> 32.54 / 24.88 / 21.51, chaplin 32.50 /
    27.14 / 21.70 -> 32.38 / 27.21 / 21.94, carphone (whole frames lost) unchanged."""

    name = "flow"

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture:
        warp = neighbours.fill_motion(picture, mask)
        if warp is None:
            return picture
        previous = neighbours.previous
        moved = _with_the_picture_after(warp.apply_to_planes([previous.y, previous.u, previous.v]), picture, mask,
                                        neighbours.after)
        filled = picture.pasted(matched_illumination(moved, picture, mask), mask)
        return with_decoder_fill(filled, picture, mask) if neighbours.decoder_concealed else filled


def _with_the_picture_after(moved: list[np.ndarray], picture: Picture, mask: np.ndarray, after: Picture | None
                            ) -> list[np.ndarray]:
    """The previous picture `moved` onto a B picture's holes, averaged with its next I or P picture (`after`) moved
    back onto them (fill_motion): in a B picture the content that was lost is seen from both sides, as its encoder
    predicts it, and the picture after was decoded before it, its concealment untouched by these holes. Training
    clips with three B-frames at 3 / 10 / 20% loss: bikes 28.77 / 25.50 / 21.48 -> 28.89 / 25.73 / 21.53 dB,
    chaplin 31.34 / 26.58 / 23.71 -> 31.34 / 26.58 / 23.68 (its B pictures are mostly lost whole), bbb 720p (150 frames,
    5%) 34.79 unchanged, fire2 720p (150 frames, 3 / 10%) 32.28 / 25.69 -> 32.53 / 25.89, bikes 10% with another
    seed 29.25 -> 29.27. Weighing the sides by their distance in frames: bikes 28.87 / 25.67 / 21.52, bbb 34.83;
    keeping the previous picture alone where the picture after is damaged: bikes 28.88 / 25.69 / 21.53, chaplin
    23.71 at 20%."""
    if after is None or not same_scene(after.y, picture.y, mask):
        return moved
    back = fill_motion(after.y, picture.y, mask).apply_to_planes([after.y, after.u, after.v])
    blended = Picture(*moved).mixed(Picture(*back), mask, 0.5)
    return [blended.y, blended.u, blended.v]


# How far around the holes (pixels) the intact picture is compared with the previous one moved onto it, to match
# the fill's brightness (matched_illumination). 12 and 48 measured no better over the training clips.
ILLUMINATION_REACH = 24
# The gain and offset are applied only where they cut the error there to this share of what it was or less: a
# brightness change that stands out of the misfit the motion leaves anyway.
ILLUMINATION_FIT = 0.8
# Gains outside this range are taken for misfit rather than light.
GAIN_RANGE = (0.8, 1.25)


def matched_illumination(moved: list[np.ndarray], picture: Picture, mask: np.ndarray) -> list[np.ndarray]:
    """The previous picture's planes moved onto `picture` (`moved`), each brought to the brightness of
    `picture` by the gain and offset that fit it best on the intact pixels around the holes (`mask`).

    In a fade the previous picture is darker or brighter all over, and a fill copied from it keeps that step
    as an error which the drift correction then carries into every later picture (the encoder's residuals
    add each frame's step on top of the true picture). bbb_720p_vp8_30s opens with a fade from black; its first
    90 frames (`conceal` with defaults) measured 42.67 / 35.89 / 19.54 dB at 3 / 10 / 20% loss, below FFmpeg's
    43.56 at 3% and 21.47 at 20%, and 50.95 / 37.54 / 21.99 so; on the other training clips bikes at 20%
    21.89 -> 22.20, chaplin at 10% 27.26 -> 27.32, and bikes and chaplin at 3 / 10 / 20%, bbb_720p_h264 and
    fire2_720p (150 frames, 10%) otherwise unchanged. An offset alone measured the same on luma."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return moved
    # Only the box around the holes is worked on: a 50-macroblock slice of a 720p picture took 6.8 ms on the whole
    # picture, 1.3 ms so. Its start is even, so that it halves exactly onto the chroma planes.
    top, left = max(0, rows[0] - ILLUMINATION_REACH) & ~1, max(0, cols[0] - ILLUMINATION_REACH) & ~1
    box = np.s_[top:rows[-1] + ILLUMINATION_REACH + 1, left:cols[-1] + ILLUMINATION_REACH + 1]
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * ILLUMINATION_REACH + 1,) * 2)
    hole = mask[box]
    around = cv2.dilate(hole.astype(np.uint8), kernel).astype(bool) & ~hole
    matched = []
    for index, (source, plane, inside) in enumerate(zip(moved, (picture.y, picture.u, picture.v), plane_boxes(box))):
        part, plane, near = source[inside], plane[inside], around if not index else around[::2, ::2]
        if np.count_nonzero(near) < MB * MB:
            matched.append(source)
            continue
        before, target = part[near].astype(np.float32), plane[near].astype(np.float32)
        spread = float(before.var())
        slope = float(np.mean((before - before.mean()) * (target - target.mean()))) / spread if spread > 1 else 1.0
        gain = float(np.clip(slope, *GAIN_RANGE))  # least squares, held to a plausible range
        offset = float(target.mean() - gain * before.mean())
        if np.mean((target - gain * before - offset) ** 2) <= ILLUMINATION_FIT * np.mean((target - before) ** 2):
            source = source.copy()
            source[inside] = np.clip(gain * part.astype(np.float32) + offset, 0, 255)
        matched.append(source)
    return matched


class InpaintConcealer:
    """OpenCV's single-image inpainting (Telea's fast marching or Navier-Stokes), plane by plane."""

    def __init__(self, method: str):
        self.name = method
        self._flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture:
        if mask.all():
            return picture  # nothing known to inpaint from
        return Picture(*(cv2.inpaint(plane, plane_mask.astype(np.uint8), INPAINT_RADIUS, self._flag)
                         for plane, plane_mask in picture.planes_with_masks(mask)))


def scene_cut_fill(picture: Picture, mask: np.ndarray, decoder_concealed: bool) -> Picture:
    """The holes of an inter picture in a stream with B-frames whose picture before shows another scene: nothing
    before it is worth copying, and FFmpeg's concealment copied from it. Filled from the picture's own intact
    pixels (Telea), and where the decoder concealed them, from its fill where that joins its surroundings clearly
    better (`with_decoder_fill`). Training clips with three B-frames (`conceal` with defaults), before -> after:
    bikes at 10 / 20% loss 25.85 / 21.62 -> 26.06 / 21.83 dB (3% and seed 2 at 10% unchanged), fire2 720p (150
    frames) at 5 / 10% 29.13 / 26.08 -> 29.46 / 26.44, bbb 720p at 5 / 10% 34.91 / 26.01 -> 35.48 / 26.03, chaplin
    unchanged; Telea alone: -0.13 dB summed over those five, Navier-Stokes as Telea. Without B-frames the same fill
    measured below FFmpeg's concealment (bikes at 3 / 10 / 20% -0.28 / -0.07 / -0.02, fire2 at 5% -0.05), so it is
    not used there."""
    spatial = InpaintConcealer("telea").conceal(picture, mask, Neighbours())
    return with_decoder_fill(spatial, picture, mask) if decoder_concealed else spatial


class NetworkConcealer:
    """A shipped inpainting network on the frame in RGB; `temporal` also sees the aligned neighbours."""

    def __init__(self, model: str):
        from . import inpaint  # torch loads only when a network is asked for
        self.name = model
        self._inpaint = inpaint
        inpaint.network(model)  # a missing or broken weights file fails now, before any output

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture:
        previous = following = None
        if self.name == "temporal":
            motion = neighbours.fill_motion(picture, mask)
            if motion is None:
                # No previous picture, or no intact pixel to move it by: the decoder's own concealment
                # (drift-corrected) scored better than the network on foreman at 20% loss, whose first
                # picture and 22 whole pictures lost all their slices (lost-pixel MSE 1762 against 3316
                # on the first, 552-1137 against 900-1294 on the others).
                return picture
            previous = self._inpaint.Neighbour(neighbours.previous.to_rgb(), motion=motion)
            if neighbours.following is not None:
                following = self._inpaint.Neighbour(neighbours.following.to_rgb(), neighbours.following_damaged)
        filled = picture.with_rgb(self._inpaint.inpaint_frame(picture.to_rgb(), mask, self.name, previous, following),
                                  mask)
        # `temporal` weighs the decoder's fill as `flow` does, whose fill it starts from (training clips, `conceal
        # --model temporal`: bikes 3% 33.05 -> 33.59 dB, chaplin 10% 26.87 -> 27.01, fire2 720p 5% 27.42 ->
        # 28.60, bbb 720p 10% 32.61 -> 33.31); the paper's model stays as published.
        if self.name == "temporal" and neighbours.decoder_concealed:
            return with_decoder_fill(filled, picture, mask)
        return filled


CONCEALERS = ("flow", "ffmpeg", "copy", "temporal", "context-encoder", "telea", "ns")
# What `conceal` fills lost blocks with unless told otherwise: the concealer that measured best with
# drift correction and blind detection (benchmarks/RESULTS.md). The trained `temporal` network starts
# from the same fill and scores level with it (its learned correction is near zero) at the cost of
# running a network, so it is not the default.
DEFAULT_CONCEALER = "flow"


def make_concealer(name: str) -> Concealer:
    if name == "ffmpeg":
        return FfmpegConcealer()
    if name == "copy":
        return CopyConcealer()
    if name == "flow":
        return FlowConcealer()
    if name in ("telea", "ns"):
        return InpaintConcealer(name)
    if name in ("temporal", "context-encoder", "context-encoder-l2"):
        return NetworkConcealer(name)
    raise UsageError(f"unknown concealment model {name!r} (use {', '.join(CONCEALERS)})")
