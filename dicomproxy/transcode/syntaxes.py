"""Transfer syntaxes and SOP classes: what we can decode, what we can encode, and what is an image.

UIDs are from PS3.6 Table A-1; the encapsulated-format rules from PS3.5 Section 8.2 and Annex A.4.
"""

from __future__ import annotations

from functools import cache

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

# The targets we can encode per mode (PS3.5 A.4) are what ``[compression]`` lists may name: defined there.
from dicomproxy.config.compression import LOSSLESS_TARGETS as LOSSLESS_TARGETS
from dicomproxy.config.compression import LOSSY_TARGETS as LOSSY_TARGETS
from dicomproxy.transport.pynetdicom_compat import storage_classes

#: Native (unencapsulated) syntaxes, PS3.5 A.1-A.3 and A.5 (deflate). Pixel Data bytes are the raw pixels.
NATIVE: frozenset[str] = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
)
#: Order in which an instance is decompressed when its original syntax is not accepted (cheapest first).
UNCOMPRESSED_FALLBACK: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)

#: Syntaxes that are (or may be) irreversible. For .4.91 and .4.203 (which may also carry reversible
#: data) Lossy Image Compression (0028,2110) decides when present (PS3.3 C.7.6.1.1.5).
LOSSY_SYNTAXES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
        "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossy or lossless)
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 multi-component
        "1.2.840.10008.1.2.4.203",  # HTJ2K (lossy or lossless)
        "1.2.840.10008.1.2.4.100",  # MPEG2 MP@ML
        "1.2.840.10008.1.2.4.100.1",
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.101.1",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.102.1",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.103.1",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.104.1",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.105.1",
        "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.106.1",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.108",
        "1.2.840.10008.1.2.4.110",  # JPEG XL
        "1.2.840.10008.1.2.4.112",
    }
)


#: Default preferences, from the measurements in docs/compression.md: the fastest codec with a good ratio
#: first, the widely accepted JPEG 2000 after it; negotiation falls back along the list.
DEFAULT_LOSSLESS: tuple[str, ...] = (HTJ2KLossless, JPEGLSLossless, JPEG2000Lossless, RLELossless)
#: JPEG Baseline applies to 8-bit images only (US, endoscopy, SC); 12/16-bit go JPEG-LS near-lossless,
#: then JPEG 2000 at ``j2k_ratio`` (5-10x slower with OpenJPEG, see docs/compression.md).
DEFAULT_LOSSY: tuple[str, ...] = (JPEGBaseline8Bit, JPEGLSNearLossless, JPEG2000)

#: PS3.3 C.7.6.1.1.5.2 Lossy Image Compression Method (0028,2114) defined terms.
LOSSY_METHOD: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.93": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}


def is_native(syntax: str) -> bool:
    """True for a syntax whose Pixel Data is not encapsulated (PS3.5 A.4: all others are)."""
    return syntax in NATIVE


def is_lossy_syntax(syntax: str) -> bool:
    return syntax in LOSSY_SYNTAXES


@cache
def can_decode(syntax: str) -> bool:
    """Whether pydicom has an available pixel decoder (or needs none) for ``syntax``."""
    if syntax in NATIVE:
        return True
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(UID(syntax)).is_available)
    except NotImplementedError:
        return False


@cache
def can_encode(syntax: str) -> bool:
    """Whether an encoder for ``syntax`` is importable here (native syntaxes need none)."""
    if syntax in NATIVE:
        return True
    if syntax in (HTJ2KLossless, JPEGBaseline8Bit):
        try:
            import imagecodecs
        except ImportError:
            return False
        codec = imagecodecs.HTJ2K if syntax == HTJ2KLossless else imagecodecs.JPEG8
        return bool(codec.available)
    if syntax in (JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless):
        from pydicom.pixels import get_encoder

        return bool(get_encoder(UID(syntax)).is_available)
    return False


_NOT_COMPRESSIBLE = (
    "MultiFrameSingleBit",  # 1-bit pixels: no codec of ours takes them
    "VideoEndoscopic",  # video SOP classes are MPEG/HEVC-only (PS3.5 8.2.5-8.2.8)
    "VideoMicroscopic",
    "VideoPhotographic",
)


@cache
def image_sop_classes() -> frozenset[str]:
    """Storage SOP classes whose Pixel Data our codecs may compress (PS3.4 B.5, image IODs).

    Non-image objects (SR, KO, PR, waveforms, encapsulated documents, RT plans, …) are never in here,
    so no compressed context is ever proposed for them.
    """
    registry = storage_classes()
    names = [
        name for name in registry if "Image" in name and not any(bad in name for bad in _NOT_COMPRESSIBLE)
    ]
    names.append("EnhancedUSVolumeStorage")
    return frozenset(str(registry[n]) for n in names if n in registry)


def is_image_sop_class(sop_class_uid: str) -> bool:
    return sop_class_uid in image_sop_classes()
