"""The gateway's fast paths through protocols/ codecs: the `msgpack` C package where protocols/ uses
its portable, pure-Python msgpack_lite (which must also run on MicroPython nodes).

Both write and read the same bytes for what the gateway handles, and each fast path here answers
exactly as the portable code does (tests/gateway/test_fast_codec.py compares them on generated
input, malformed included):

    decode_data(payload)   a DATA frame's message, as decode_message(DATA, payload) returns it
                           (LinkMessageError for the same payloads)
    packb(obj)             msgpack bytes, as msgpack_lite.packb writes them
    install()              cnb1 bodies packed with packb from now on (protocols/batch_builder.py
                           set_packer); GatewayService calls it

Why: every reading the gateway receives goes through one DATA decode and one cnb1 body; in pure
Python those were ~20 % of the gateway's CPU per reading (bench/README.md "Gateway throughput").
"""

from __future__ import annotations

from typing import Any

import msgpack

from protocols import batch_builder
from protocols.link_frame import DATA
from protocols.link_messages import _check as _check_message  # the portable schema check
from protocols.link_messages import decode_message

__all__ = ["decode_data", "install", "packb"]

# Types msgpack_lite decodes to; anything else (ExtType, Timestamp) means the portable decoder
# would have refused the payload.
_SCALARS = frozenset((int, float, str, bytes, bool, type(None)))


def _decode(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)


def decode_data(payload: bytes) -> dict[str, Any]:
    """The validated DATA message of `payload`; raises LinkMessageError as decode_message does."""
    try:
        message = _decode(payload)
    except Exception:  # noqa: BLE001 - malformed: the portable decoder names the error below
        message = None
    # The fast answer is used only when the message is a map of scalars and flat lists of
    # scalars, as every node sends: then msgpack_lite would have decoded the same objects (no
    # ext types, no nesting limit reached, hashable keys). Anything else goes the portable way.
    if type(message) is dict and _SCALARS.issuperset(map(type, message)):
        for value in message.values():
            kind = type(value)
            if kind is list:
                if not _SCALARS.issuperset(map(type, value)):
                    break
            elif kind not in _SCALARS:
                break
        else:
            return _check_message(DATA, message)  # type: ignore[no-any-return]
    return decode_message(DATA, payload)  # type: ignore[no-any-return]


_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def packb(obj: Any) -> bytes:
    """msgpack bytes of `obj`, those of protocols.msgpack_lite.packb (use_bin_type)."""
    return _packer.pack(obj)


def install() -> None:
    """Pack cnb1 bodies with the C packer in this process (the same bytes, ~10x faster)."""
    batch_builder.set_packer(packb)
