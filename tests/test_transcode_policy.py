"""Transcode policy: configuration, proposed contexts, per-instance target choice (no pixel work)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalMammographyXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    RLELossless,
    RTDoseStorage,
    TwelveLeadECGWaveformStorage,
    UltrasoundImageStorage,
    VideoEndoscopicImageStorage,
)

from dicomproxy.config import Config
from dicomproxy.errors import CannotTranscode, ConfigError
from dicomproxy.transcode import (
    InstanceInfo,
    Policy,
    check_policies,
    choose_target,
    codec_applies,
    policy_for,
    proposed_syntaxes,
)
from dicomproxy.transcode.syntaxes import DEFAULT_LOSSLESS, DEFAULT_LOSSY

ALL = [
    HTJ2KLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    JPEG2000,
    JPEGLSNearLossless,
    JPEGBaseline8Bit,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
]
IMPLICIT_ONLY = [ImplicitVRLittleEndian]
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def policy(mode: str = "lossless", **kw: Any) -> Policy:
    return replace(Policy.default(mode), **kw)  # type: ignore[arg-type]


def info(kind: str = "CT", **kw: Any) -> InstanceInfo:
    presets: dict[str, dict[str, Any]] = {
        "CT": dict(sop_class_uid=CTImageStorage, modality="CT", bits_allocated=16, bits_stored=12),
        "MR": dict(sop_class_uid=MRImageStorage, modality="MR", bits_allocated=16, pixel_representation=1),
        "US": dict(
            sop_class_uid=UltrasoundImageStorage,
            modality="US",
            bits_allocated=8,
            bits_stored=8,
            samples_per_pixel=3,
            photometric="RGB",
        ),
        "MG": dict(sop_class_uid=DigitalMammographyXRayImageStorageForPresentation, modality="MG"),
        "SR": dict(sop_class_uid=BasicTextSRStorage, modality="SR", has_pixel_data=False),
        "PDF": dict(sop_class_uid=EncapsulatedPDFStorage, modality="DOC", has_pixel_data=False),
        "ECG": dict(sop_class_uid=TwelveLeadECGWaveformStorage, modality="ECG", has_pixel_data=False),
        "DOSE": dict(sop_class_uid=RTDoseStorage, modality="RTDOSE", bits_allocated=32),
    }
    fields: dict[str, Any] = dict(
        sop_class_uid=CTImageStorage,
        sop_instance_uid="2.25.1",
        transfer_syntax=ExplicitVRLittleEndian,
        modality="CT",
        has_pixel_data=True,
        already_lossy=False,
        bits_allocated=16,
        samples_per_pixel=1,
        photometric="MONOCHROME2",
        number_of_frames=1,
        bits_stored=16,
        pixel_representation=0,
        rows=512,
        columns=512,
    )
    fields.update(presets[kind])
    fields.update(kw)
    return InstanceInfo(**fields)


# --- configuration ------------------------------------------------------------------------------


def test_policy_defaults_and_peer_override(make_config: Any) -> None:
    config: Config = make_config(
        compression={"mode": "lossy", "j2k_ratio": 15.0, "jpeg_quality": 80, "workers": 2},
        peers=[
            {"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1, "compression": "lossless"},
            {"ae_title": "VIEWER", "host": "127.0.0.1", "port": 2},
        ],
    )
    cloud = policy_for(config, config.peer("CLOUD"))
    viewer = policy_for(config, config.peer("VIEWER"))
    assert (cloud.mode, viewer.mode, policy_for(config, None).mode) == ("lossless", "lossy", "lossy")
    assert cloud.lossless_syntaxes == DEFAULT_LOSSLESS
    assert cloud.lossy_syntaxes == DEFAULT_LOSSY
    assert (viewer.j2k_ratio, viewer.jpeg_quality, viewer.workers) == (15.0, 80, 2)
    assert viewer.never_lossy_modalities == ("MG",)


def test_policy_custom_order(make_config: Any) -> None:
    config = make_config(
        compression={"mode": "lossless", "lossless_syntaxes": [JPEG2000Lossless, RLELossless]}
    )
    assert policy_for(config, None).lossless_syntaxes == (JPEG2000Lossless, RLELossless)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lossless_syntaxes", [JPEG2000]),  # lossy syntax in the lossless list
        ("lossy_syntaxes", [JPEGLSLossless]),
        ("lossless_syntaxes", ["1.2.3.4"]),
    ],
)
def test_config_load_rejects_wrong_syntaxes(make_config: Any, key: str, value: list[str]) -> None:
    """Rejected when the file is loaded (check-config, serve start), not by every C-MOVE (0xC000)."""
    with pytest.raises(ConfigError, match=f"compression.{key}: {value[0]} is not one of"):
        make_config(compression={key: value})


def test_a_syntax_without_an_installed_encoder_is_rejected_at_load(
    make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file may name it (it is a lossless target), but this machine cannot encode it."""
    from dicomproxy.transcode import policy as policy_module

    config = make_config(compression={"lossless_syntaxes": [RLELossless, JPEGLSLossless]})
    check_policies(config)  # every encoder there: fine
    monkeypatch.setattr(policy_module, "can_encode", lambda syntax: syntax != JPEGLSLossless)
    with pytest.raises(
        ConfigError, match=f"compression.lossless_syntaxes: no encoder for {JPEGLSLossless} is installed"
    ):
        check_policies(config)


def test_jpeg_quality_is_validated(make_config: Any) -> None:
    with pytest.raises(ConfigError, match="jpeg_quality"):
        make_config(compression={"jpeg_quality": 0})


# --- proposed contexts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "sop_class", "source", "expected"),
    [
        ("none", CTImageStorage, [ExplicitVRLittleEndian], [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (
            "none",
            CTImageStorage,
            [JPEGLSLossless],
            [JPEGLSLossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        ),
        ("lossless", CTImageStorage, [ExplicitVRLittleEndian], [*DEFAULT_LOSSLESS, *UNCOMPRESSED]),
        (
            "lossless",
            CTImageStorage,
            [JPEGBaseline8Bit, ImplicitVRLittleEndian],
            [*DEFAULT_LOSSLESS, JPEGBaseline8Bit, ImplicitVRLittleEndian, ExplicitVRLittleEndian],
        ),
        (
            "lossy",
            CTImageStorage,
            [ExplicitVRLittleEndian],
            [*DEFAULT_LOSSY, *DEFAULT_LOSSLESS, *UNCOMPRESSED],
        ),
        # non-image objects never get a compressed context, in any mode
        ("lossy", BasicTextSRStorage, [ExplicitVRLittleEndian], UNCOMPRESSED),
        (
            "lossless",
            EncapsulatedPDFStorage,
            [ImplicitVRLittleEndian],
            [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
        ),
        (
            "lossy",
            TwelveLeadECGWaveformStorage,
            [DeflatedExplicitVRLittleEndian],
            [DeflatedExplicitVRLittleEndian, *UNCOMPRESSED],
        ),
        # video is MPEG only
        ("lossless", VideoEndoscopicImageStorage, [MPEG2MPML], [MPEG2MPML, *UNCOMPRESSED]),
    ],
)
def test_proposed_syntaxes(mode: str, sop_class: str, source: list[str], expected: list[str]) -> None:
    assert proposed_syntaxes(policy(mode), sop_class, source) == expected


def test_proposed_syntaxes_never_lossy_sop_class() -> None:
    p = policy("lossy", never_lossy_sop_classes=(CTImageStorage,))
    assert proposed_syntaxes(p, CTImageStorage, [ExplicitVRLittleEndian]) == [
        *DEFAULT_LOSSLESS,
        *UNCOMPRESSED,
    ]


# --- per-instance choice ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "inst", "accepted", "expected"),
    [
        # none: original if accepted, else decompress
        ("none", info("CT"), ALL, ExplicitVRLittleEndian),
        ("none", info("CT", transfer_syntax=JPEGLSLossless), ALL, JPEGLSLossless),
        ("none", info("CT", transfer_syntax=JPEGLSLossless), UNCOMPRESSED, ExplicitVRLittleEndian),
        ("none", info("CT", transfer_syntax=JPEGLSLossless), IMPLICIT_ONLY, ImplicitVRLittleEndian),
        ("none", info("CT", transfer_syntax=JPEGLSLossless), [RLELossless], RLELossless),
        # lossless: best accepted target
        ("lossless", info("CT"), ALL, HTJ2KLossless),
        ("lossless", info("CT"), [JPEG2000Lossless, *UNCOMPRESSED], JPEG2000Lossless),
        ("lossless", info("CT"), [JPEG2000Lossless, JPEGLSLossless, *UNCOMPRESSED], JPEGLSLossless),
        ("lossless", info("US"), ALL, HTJ2KLossless),
        ("lossless", info("MR"), ALL, HTJ2KLossless),
        ("lossless", info("CT", number_of_frames=40), ALL, HTJ2KLossless),
        # implicit-only destination still gets everything, decompressed
        ("lossless", info("CT"), IMPLICIT_ONLY, ImplicitVRLittleEndian),
        ("lossless", info("CT", transfer_syntax=JPEG2000Lossless), IMPLICIT_ONLY, ImplicitVRLittleEndian),
        (
            "lossy",
            info("US", transfer_syntax=JPEGBaseline8Bit, already_lossy=True),
            IMPLICIT_ONLY,
            ImplicitVRLittleEndian,
        ),
        # a source already in one of the mode's targets (or lossy) goes as held
        ("lossless", info("CT", transfer_syntax=JPEGLSLossless), ALL, JPEGLSLossless),
        ("lossless", info("US", transfer_syntax=JPEGBaseline8Bit, already_lossy=True), ALL, JPEGBaseline8Bit),
        # lossy
        ("lossy", info("CT"), ALL, JPEGLSNearLossless),  # default order: 16-bit skips JPEG Baseline
        ("lossy", info("US"), ALL, JPEGBaseline8Bit),
        ("lossy", info("CT"), [JPEG2000, *UNCOMPRESSED], JPEG2000),
        ("lossy", info("CT"), [JPEGLSNearLossless, *UNCOMPRESSED], JPEGLSNearLossless),
        ("lossy", info("US"), [JPEGBaseline8Bit, *UNCOMPRESSED], JPEGBaseline8Bit),
        ("lossy", info("CT"), [JPEGBaseline8Bit, *UNCOMPRESSED], ExplicitVRLittleEndian),  # 16-bit: no JPEG 8
        ("lossy", info("MR"), [JPEGLSNearLossless, JPEGLSLossless, *UNCOMPRESSED], JPEGLSLossless),  # signed
        # a lossless-compressed source is compressed lossily in lossy mode, kept where lossy is not allowed
        ("lossy", info("CT", transfer_syntax=JPEGLSLossless), ALL, JPEGLSNearLossless),
        ("lossy", info("MG", transfer_syntax=JPEGLSLossless), ALL, JPEGLSLossless),
        ("lossy", info("CT", transfer_syntax=RLELossless), [JPEG2000, RLELossless], JPEG2000),
        # MG is never lossy: lossless target instead
        ("lossy", info("MG"), ALL, HTJ2KLossless),
        ("lossy", info("MG"), [JPEG2000, *UNCOMPRESSED], ExplicitVRLittleEndian),
        # already lossy is never compressed lossily again
        ("lossy", info("CT", already_lossy=True), [JPEG2000, *UNCOMPRESSED], ExplicitVRLittleEndian),
        (
            "lossy",
            info("CT", transfer_syntax=JPEG2000, already_lossy=True),
            [JPEG2000, JPEGLSNearLossless],
            JPEG2000,
        ),
        (
            "lossy",
            info("CT", transfer_syntax=JPEGBaseline8Bit, already_lossy=True),
            [JPEG2000, JPEG2000Lossless, *UNCOMPRESSED],
            JPEG2000Lossless,
        ),
        # non-image objects: never compressed, converted between native syntaxes when needed
        ("lossy", info("SR"), ALL, ExplicitVRLittleEndian),
        ("lossless", info("PDF", transfer_syntax=ImplicitVRLittleEndian), ALL, ImplicitVRLittleEndian),
        ("lossy", info("ECG"), IMPLICIT_ONLY, ImplicitVRLittleEndian),
        # codecs skip what they cannot carry
        ("lossless", info("DOSE"), ALL, ExplicitVRLittleEndian),  # 32-bit
        ("lossy", info("CT", float_pixels=True, has_pixel_data=False), ALL, ExplicitVRLittleEndian),
        ("lossless", info("CT", rows=50000, columns=50000, bits_allocated=8), ALL, ExplicitVRLittleEndian),
        (
            "lossless",
            info("CT", sop_class_uid=VideoEndoscopicImageStorage, transfer_syntax=MPEG2MPML),
            [MPEG2MPML],
            MPEG2MPML,
        ),
    ],
)
def test_choose_target(mode: str, inst: InstanceInfo, accepted: list[str], expected: str) -> None:
    assert choose_target(policy(mode), inst, accepted) == expected


def test_choose_target_never_lossy_sop_class() -> None:
    p = policy("lossy", never_lossy_sop_classes=(CTImageStorage,))
    assert choose_target(p, info("CT"), ALL) == HTJ2KLossless


@pytest.mark.parametrize(
    ("inst", "accepted"),
    [
        (info("CT", sop_class_uid=VideoEndoscopicImageStorage, transfer_syntax=MPEG2MPML), UNCOMPRESSED),
        (info("CT"), [JPEG2000]),  # only lossy offered in lossless mode, no fallback accepted
        (info("SR"), [JPEGLSLossless]),
        (info("CT"), []),
    ],
)
def test_choose_target_fails_clearly(inst: InstanceInfo, accepted: list[str]) -> None:
    with pytest.raises(CannotTranscode) as exc_info:
        choose_target(policy("lossless"), inst, accepted)
    assert exc_info.value.status == 0xC010
    assert len(exc_info.value.comment) <= 64


def test_instance_info_pixel_bytes() -> None:
    assert info("CT").pixel_bytes == 512 * 512 * 2
    assert info("US", rows=480, columns=640, number_of_frames=10).pixel_bytes == 480 * 640 * 3 * 10
    assert info("SR").pixel_bytes == 0


def test_unused_path_fixture_sanity(tmp_path: Path) -> None:
    # make_config writes nothing; the policy module must not need files
    assert not any(tmp_path.iterdir())


# --- codec and fallback boundaries the mutation runs found unguarded (issue 18) ----------------


@pytest.mark.parametrize(
    ("inst", "applies"),
    [
        (info("US", samples_per_pixel=1, photometric="MONOCHROME2", bits_stored=None), True),  # BS absent: 8
        (info("US", samples_per_pixel=1, photometric="MONOCHROME2", bits_stored=8), True),
        (info("US", samples_per_pixel=1, photometric="MONOCHROME2", bits_stored=7), False),
        (info("US", samples_per_pixel=1, photometric="MONOCHROME2", pixel_representation=1), False),
        (info("US"), True),  # RGB
        (info("CT"), False),  # 16 bits allocated
        (info("CT", bits_stored=8), False),  # 16 bits allocated, 8 stored
    ],
)
def test_jpeg_baseline_takes_unsigned_8_bit_only(inst: InstanceInfo, applies: bool) -> None:
    """PS3.5 8.2.1: JPEG Baseline carries 8-bit unsigned samples (Bits Stored absent counts as 8)."""
    assert codec_applies(policy("lossy"), inst, JPEGBaseline8Bit) is applies


@pytest.mark.parametrize(
    ("bits_allocated", "samples", "applies"),
    [
        (8, 1, True),
        (16, 1, True),
        (16, 3, True),
        (32, 1, False),
        (12, 1, False),
        (16, 2, False),
        (16, 4, False),
    ],
)
def test_codecs_take_8_or_16_bits_and_1_or_3_samples(
    bits_allocated: int, samples: int, applies: bool
) -> None:
    photometric = "RGB" if samples == 3 else "MONOCHROME2"
    inst = info(
        "CT", bits_allocated=bits_allocated, bits_stored=8, samples_per_pixel=samples, photometric=photometric
    )
    assert codec_applies(policy("lossless"), inst, JPEGLSLossless) is applies


def test_max_encode_bytes_is_inclusive() -> None:
    """An instance of exactly ``max_encode_bytes`` is still encoded; one byte more is not."""
    inst = info("CT")
    assert codec_applies(policy("lossless", max_encode_bytes=inst.pixel_bytes), inst, JPEGLSLossless)
    assert not codec_applies(policy("lossless", max_encode_bytes=inst.pixel_bytes - 1), inst, JPEGLSLossless)


@pytest.mark.parametrize("mode", ["none", "lossless"])
def test_no_pixels_fall_back_to_explicit_first(mode: str) -> None:
    """A data set without pixels held in a syntax the destination did not accept: Explicit VR
    Little Endian before Implicit (cheapest faithful re-encoding, UNCOMPRESSED_FALLBACK order)."""
    inst = info("SR", transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert (
        choose_target(policy(mode), inst, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
        == ExplicitVRLittleEndian
    )
    assert choose_target(policy(mode), inst, [ImplicitVRLittleEndian]) == ImplicitVRLittleEndian


def test_cannot_transcode_names_what_was_accepted() -> None:
    with pytest.raises(CannotTranscode, match=r"destination accepted only nothing for "):
        choose_target(policy("lossless"), info("CT", transfer_syntax=JPEG2000, already_lossy=True), [])
    with pytest.raises(
        CannotTranscode, match=rf"destination accepted only {JPEGLSLossless}, {RLELossless} for "
    ):
        choose_target(
            policy("lossless"),
            info("CT", transfer_syntax=MPEG2MPML, sop_class_uid=VideoEndoscopicImageStorage),
            [JPEGLSLossless, RLELossless],
        )


@pytest.mark.parametrize(("rows", "columns", "applies"), [(64, 64, True), (63, 512, False), (512, 32, False)])
def test_jpeg2000_needs_64_pixels_each_way(rows: int, columns: int, applies: bool) -> None:
    """pylibjpeg-openjpeg's 6 resolution levels: smaller images cannot be encoded."""
    inst = info("CT", rows=rows, columns=columns)
    assert codec_applies(policy("lossless"), inst, JPEG2000Lossless) is applies
    assert codec_applies(policy("lossy"), inst, JPEG2000) is applies


def test_no_codec_applies_to_pixels_we_cannot_decode() -> None:
    inst = info(
        "CT", sop_class_uid=VideoEndoscopicImageStorage, transfer_syntax=MPEG2MPML, already_lossy=True
    )
    assert not codec_applies(policy("lossless"), inst, JPEGLSLossless)
    assert codec_applies(
        policy("lossless"), replace(inst, transfer_syntax=ExplicitVRLittleEndian), JPEGLSLossless
    )


def test_default_encode_limit_is_one_gibibyte() -> None:
    """Larger instances (whole-slide images) are never decoded to be re-encoded (docs/compression.md)."""
    frames_of_128_mib = info("CT", rows=8192, columns=8192)  # 8192 × 8192 × 2 bytes = 128 MiB a frame
    assert codec_applies(policy("lossless"), replace(frames_of_128_mib, number_of_frames=8), JPEGLSLossless)
    assert not codec_applies(
        policy("lossless"), replace(frames_of_128_mib, number_of_frames=9), JPEGLSLossless
    )


def test_data_set_without_pixels_in_an_undecodable_syntax_is_not_converted() -> None:
    """No pixels, but held in a syntax we cannot decode: only that syntax carries it."""
    inst = info("SR", transfer_syntax=MPEG2MPML)
    with pytest.raises(CannotTranscode):
        choose_target(policy("none"), inst, UNCOMPRESSED)
    assert choose_target(policy("none"), inst, [*UNCOMPRESSED, MPEG2MPML]) == MPEG2MPML


@pytest.mark.parametrize(
    ("inst", "target"),
    [
        (info("CT"), MPEG2MPML),  # no encoder for it
        (info("SR"), JPEGLSLossless),  # no pixels
        (info("CT", float_pixels=True), JPEGLSLossless),  # Float Pixel Data: no codec takes it
    ],
)
def test_no_codec_without_encoder_or_integer_pixels(inst: InstanceInfo, target: str) -> None:
    assert not codec_applies(policy("lossy"), inst, target)


@pytest.mark.parametrize("mode", ["none", "lossless", "lossy"])
def test_float_pixels_are_re_encoded_uncompressed_only(mode: str) -> None:
    """Float Pixel Data held big endian, destination takes only little endian: a re-encoding of
    the data set, never a codec (and not refused)."""
    inst = info("CT", float_pixels=True, bits_allocated=32, transfer_syntax=ExplicitVRBigEndian)
    assert (
        choose_target(policy(mode), inst, [JPEGLSLossless, ExplicitVRLittleEndian]) == ExplicitVRLittleEndian
    )
    with pytest.raises(CannotTranscode):
        choose_target(policy(mode), inst, [JPEGLSLossless])
