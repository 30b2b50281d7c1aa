"""Which transfer syntaxes to propose for a destination, and which one to use for each instance.

Negotiation (PS3.8 9.3.2.2, PS3.7 D.3.3.4): every proposed syntax goes in its own presentation
context, so the acceptor can accept several per SOP class; the relay then picks per instance with
:func:`choose_target` among the ones accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSNearLossless

from dicomproxy.config import CompressionConfig, Config, PeerConfig
from dicomproxy.errors import CannotTranscode, ConfigError
from dicomproxy.transcode.info import InstanceInfo
from dicomproxy.transcode.syntaxes import (
    DEFAULT_LOSSLESS,
    DEFAULT_LOSSY,
    UNCOMPRESSED_FALLBACK,
    can_decode,
    can_encode,
    is_image_sop_class,
    is_native,
)

#: Instances larger than this (uncompressed pixel bytes) are never decoded to be re-encoded: they go as
#: held (or decompressed only if the destination leaves no choice). Whole-slide images live here.
MAX_ENCODE_BYTES = 1 << 30

#: Photometric Interpretations (0028,0004) our encoders take after decoding (PS3.3 C.7.6.3.1.2).
_ENCODABLE_PHOTOMETRIC = frozenset(
    {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"}
)


@dataclass(frozen=True)
class Policy:
    """The effective compression policy for one destination (``[compression]`` + the peer's override)."""

    mode: Literal["none", "lossless", "lossy"]
    lossless_syntaxes: tuple[str, ...]
    lossy_syntaxes: tuple[str, ...]
    j2k_ratio: float
    j2k_psnr: float
    jpegls_near: int
    uid_policy: Literal["keep", "new"]
    never_lossy_modalities: tuple[str, ...]
    never_lossy_sop_classes: tuple[str, ...]
    #: JPEG Baseline quality (1-100, libjpeg scale) for 8-bit lossy.
    jpeg_quality: int = 90
    #: Encoder processes for :class:`~dicomproxy.transcode.pool.TranscodePool`; 0 = CPU count.
    workers: int = 0
    max_encode_bytes: int = MAX_ENCODE_BYTES

    @classmethod
    def default(cls, mode: Literal["none", "lossless", "lossy"] = "lossless") -> Policy:
        """The built-in policy for ``mode``: ``[compression]`` defaults and the default codec orders."""
        return cls.from_compression(CompressionConfig(), mode, DEFAULT_LOSSLESS, DEFAULT_LOSSY)

    @classmethod
    def from_compression(
        cls,
        c: CompressionConfig,
        mode: Literal["none", "lossless", "lossy"],
        lossless_syntaxes: tuple[str, ...],
        lossy_syntaxes: tuple[str, ...],
    ) -> Policy:
        """``[compression]`` ``c``'s settings with ``mode`` and these codec orders."""
        return cls(
            mode=mode,
            lossless_syntaxes=lossless_syntaxes,
            lossy_syntaxes=lossy_syntaxes,
            j2k_ratio=c.j2k_ratio,
            j2k_psnr=c.j2k_psnr,
            jpegls_near=c.jpegls_near,
            uid_policy=c.uid_policy,
            never_lossy_modalities=tuple(m.upper() for m in c.never_lossy_modalities),
            never_lossy_sop_classes=c.never_lossy_sop_classes,
            jpeg_quality=c.jpeg_quality,
            workers=c.workers,
        )


def _targets(config: Config, key: str, given: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
    """The configured order or the default order restricted to installed encoders.

    Which syntaxes a list may name at all is checked when the file is read (``config.compression``).
    """
    if not given:
        return tuple(s for s in default if can_encode(s))
    for syntax in given:
        if not can_encode(syntax):
            raise ConfigError(config.path, f"compression.{key}", f"no encoder for {syntax} is installed")
    return tuple(dict.fromkeys(given))


def policy_for(config: Config, peer: PeerConfig | None) -> Policy:
    """The policy for ``peer`` (or the global one for ``None``); raises ConfigError on unusable syntaxes."""
    c = config.compression
    mode = peer.compression if peer is not None and peer.compression is not None else c.mode
    lossless = _targets(config, "lossless_syntaxes", c.lossless_syntaxes, DEFAULT_LOSSLESS)
    lossy = _targets(config, "lossy_syntaxes", c.lossy_syntaxes, DEFAULT_LOSSY)
    return Policy.from_compression(c, mode, lossless, lossy)


def check_policies(config: Config) -> None:
    """Build the file's policy: a configured syntax without an installed encoder fails here, naming
    its key, when the file is loaded — not in every job (0xC000). One build covers every peer: a peer
    changes only the mode, the syntax lists are ``[compression]``'s.
    """
    policy_for(config, None)


def _mode_targets(policy: Policy, sop_class_uid: str) -> list[str]:
    """Compressed targets of the mode for this SOP class, best first.

    Lossy mode also lists the lossless targets: instances that may not be compressed lossily
    (excluded modality, already lossy, …) still travel compressed when the destination allows.
    """
    if policy.mode == "none" or not is_image_sop_class(sop_class_uid):
        return []
    if policy.mode == "lossless":
        return list(policy.lossless_syntaxes)
    lossy = [] if sop_class_uid in policy.never_lossy_sop_classes else list(policy.lossy_syntaxes)
    return lossy + list(policy.lossless_syntaxes)


def proposed_syntaxes(policy: Policy, sop_class_uid: str, source_syntaxes: Iterable[str]) -> list[str]:
    """Transfer syntaxes to propose for ``sop_class_uid``, each as its own presentation context.

    Order: the mode's targets that apply to this SOP class, the syntaxes the instances are held in,
    Explicit VR Little Endian, Implicit VR Little Endian (the default syntax every SCP accepts,
    PS3.5 10.1). Duplicates are dropped, first place wins.
    """
    ordered = [*_mode_targets(policy, sop_class_uid), *source_syntaxes, *UNCOMPRESSED_FALLBACK[:2]]
    return list(dict.fromkeys(str(s) for s in ordered))


def lossy_allowed(policy: Policy, info: InstanceInfo) -> bool:
    """PS3.3 C.7.6.1.1.5 / site rules: never lossy on non-images, lossy data, excluded modalities/classes."""
    return (
        info.has_pixel_data
        and not info.already_lossy
        and info.modality.upper() not in policy.never_lossy_modalities
        and info.sop_class_uid not in policy.never_lossy_sop_classes
        and is_image_sop_class(info.sop_class_uid)
    )


def codec_applies(policy: Policy, info: InstanceInfo, target: str) -> bool:
    """Whether our encoder for ``target`` can carry this instance's pixels (PS3.5 8.2, A.4)."""
    if not (info.has_pixel_data and not info.float_pixels and can_encode(target)):
        return False
    if info.bits_allocated not in (8, 16) or info.samples_per_pixel not in (1, 3):
        return False
    if info.photometric not in _ENCODABLE_PHOTOMETRIC or info.pixel_bytes > policy.max_encode_bytes:
        return False
    if not can_decode(info.transfer_syntax):
        return False
    if target == JPEGBaseline8Bit:
        # PS3.5 8.2.1: 8-bit samples only; we encode MONOCHROME and RGB (as YBR_FULL_422).
        return (
            info.bits_allocated == 8
            and (info.bits_stored or 8) == 8
            and info.pixel_representation != 1
            and info.photometric in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL_422", "YBR_FULL")
        )
    if target in (JPEG2000Lossless, JPEG2000) and min(info.rows or 0, info.columns or 0) < 64:
        # pylibjpeg-openjpeg always uses 6 resolution levels; smaller images cannot be encoded.
        return False
    if target == JPEGLSNearLossless:
        # Near-lossless on signed data can wrap around at the range ends.
        return info.pixel_representation != 1 and info.photometric != "PALETTE COLOR"
    return not (target in policy.lossy_syntaxes and info.photometric == "PALETTE COLOR")


def choose_target(policy: Policy, info: InstanceInfo, accepted: Sequence[str]) -> str:
    """The transfer syntax to send ``info`` in, among those the destination ``accepted``.

    - ``none``: the original if accepted; else the cheapest conversion (uncompressed, then a lossless
      codec if only those are accepted).
    - ``lossless`` / ``lossy``: an original that is lossy, or already in one of the targets this
      instance may get (lossy targets where lossy is allowed, else lossless ones), is sent as held;
      otherwise the first accepted target (lossy ones only where :func:`lossy_allowed`) whose codec
      applies; else the original; else uncompressed.

    Raises :class:`~dicomproxy.errors.CannotTranscode` when nothing accepted can carry the instance.
    """
    acc = [str(s) for s in accepted]
    source = info.transfer_syntax
    decodable = can_decode(source) and not info.float_pixels
    uncompressed = [s for s in UNCOMPRESSED_FALLBACK if s in acc]
    if not info.has_pixel_data or info.float_pixels:
        # No integer pixels to decode: native syntaxes are a re-encoding of the header only.
        if source in acc:
            return source
        if (is_native(source) or (not info.has_pixel_data and decodable)) and uncompressed:
            return uncompressed[0]
        raise CannotTranscode(f"no accepted syntax can carry {info.sop_class_uid}: {', '.join(acc)}")

    if policy.mode != "none":
        lossy_ok = policy.mode == "lossy" and lossy_allowed(policy, info)
        # Already compressed the way this instance may be compressed (or lossy: re-encoding would only
        # inflate it): send as held. A lossless source in lossy mode is still compressed lossily.
        fitting = policy.lossy_syntaxes if lossy_ok else policy.lossless_syntaxes
        if source in acc and not is_native(source) and (info.already_lossy or source in fitting):
            return source
        candidates = (list(policy.lossy_syntaxes) if lossy_ok else []) + list(policy.lossless_syntaxes)
        if is_image_sop_class(info.sop_class_uid):
            for target in candidates:
                if target in acc and codec_applies(policy, info, target):
                    return target
    if source in acc:
        return source
    if decodable and uncompressed:
        return uncompressed[0]
    if decodable:
        for target in policy.lossless_syntaxes:
            if target in acc and codec_applies(policy, info, target):
                return target
    raise CannotTranscode(
        f"destination accepted only {', '.join(acc) or 'nothing'} for {info.sop_class_uid}; "
        f"cannot convert from {source}"
    )
