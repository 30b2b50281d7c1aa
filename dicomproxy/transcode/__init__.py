"""Compression on the way out (issue 5): policy, negotiation, choice per instance, transcoding.

Pure functions, no network. The relay calls :func:`policy_for` once per destination,
:func:`proposed_syntaxes` per SOP class when it builds presentation contexts, :func:`choose_target`
per instance with the syntaxes accepted, then :func:`transcode_file` (or :class:`TranscodePool`).
"""

from dicomproxy.transcode.codec import TranscodeResult, transcode_file
from dicomproxy.transcode.info import InstanceInfo, read_info
from dicomproxy.transcode.policy import (
    Policy,
    check_policies,
    choose_target,
    codec_applies,
    lossy_allowed,
    policy_for,
    proposed_syntaxes,
)
from dicomproxy.transcode.pool import TranscodePool
from dicomproxy.transcode.syntaxes import (
    DEFAULT_LOSSLESS,
    DEFAULT_LOSSY,
    LOSSLESS_TARGETS,
    LOSSY_TARGETS,
    is_image_sop_class,
)

__all__ = [
    "DEFAULT_LOSSLESS",
    "DEFAULT_LOSSY",
    "LOSSLESS_TARGETS",
    "LOSSY_TARGETS",
    "InstanceInfo",
    "Policy",
    "TranscodePool",
    "TranscodeResult",
    "check_policies",
    "choose_target",
    "codec_applies",
    "is_image_sop_class",
    "lossy_allowed",
    "policy_for",
    "proposed_syntaxes",
    "read_info",
    "transcode_file",
]
