"""``[compression]``: what goes out to the peers, and the syntaxes its lists may name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydicom.uid import (
    JPEG2000,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicomproxy.config.reader import Section

CompressionMode = Literal["none", "lossless", "lossy"]
UidPolicy = Literal["keep", "new"]
COMPRESSION_MODES: tuple[str, ...] = ("none", "lossless", "lossy")

#: Targets we can encode in lossless mode (PS3.5 A.4.1 JPEG-LS, A.4.4 JPEG 2000, A.4.11 HTJ2K, A.4.2 RLE).
LOSSLESS_TARGETS: tuple[str, ...] = (HTJ2KLossless, JPEGLSLossless, JPEG2000Lossless, RLELossless)
#: Targets we can encode in lossy mode (PS3.5 A.4.4 JPEG 2000, A.4.3 JPEG-LS near-lossless, A.4.1 JPEG).
LOSSY_TARGETS: tuple[str, ...] = (JPEG2000, JPEGLSNearLossless, JPEGBaseline8Bit)


@dataclass(frozen=True)
class CompressionConfig:
    """影像压缩方式: what goes out to the peers (issue: compression)."""

    mode: CompressionMode = "none"
    lossless_syntaxes: tuple[str, ...] = ()
    lossy_syntaxes: tuple[str, ...] = ()
    j2k_ratio: float = 10.0
    j2k_psnr: float = 0.0
    jpegls_near: int = 2
    #: JPEG Baseline quality (1-100) for 8-bit images in lossy mode.
    jpeg_quality: int = 90
    uid_policy: UidPolicy = "keep"
    never_lossy_modalities: tuple[str, ...] = ("MG",)
    never_lossy_sop_classes: tuple[str, ...] = ()
    workers: int = 0


def compression(s: Section) -> CompressionConfig:
    """``[compression]``; a syntax a list may not name is rejected here, not by every job (0xC000).

    Whether an encoder for each named syntax is installed is checked when the transcode policy is
    built (:func:`dicomproxy.transcode.policy.check_policies`, run by the CLI after loading).
    """
    cd = CompressionConfig()
    config = CompressionConfig(
        mode=s.string("mode", cd.mode, choices=COMPRESSION_MODES),
        lossless_syntaxes=s.strings("lossless_syntaxes", cd.lossless_syntaxes),
        lossy_syntaxes=s.strings("lossy_syntaxes", cd.lossy_syntaxes),
        j2k_ratio=s.number("j2k_ratio", cd.j2k_ratio),
        j2k_psnr=s.number("j2k_psnr", cd.j2k_psnr),
        jpegls_near=s.integer("jpegls_near", cd.jpegls_near, lo=0, hi=255),
        jpeg_quality=s.integer("jpeg_quality", cd.jpeg_quality, lo=1, hi=100),
        uid_policy=s.string("uid_policy", cd.uid_policy, choices=("keep", "new")),
        never_lossy_modalities=s.strings("never_lossy_modalities", cd.never_lossy_modalities),
        never_lossy_sop_classes=s.strings("never_lossy_sop_classes", cd.never_lossy_sop_classes),
        workers=s.integer("workers", cd.workers, lo=0),
    )
    s.finish()
    for key, given, allowed in (
        ("lossless_syntaxes", config.lossless_syntaxes, LOSSLESS_TARGETS),
        ("lossy_syntaxes", config.lossy_syntaxes, LOSSY_TARGETS),
    ):
        for syntax in given:
            if syntax not in allowed:
                raise s.error(key, f"{syntax} is not one of {', '.join(allowed)}")
    return config
