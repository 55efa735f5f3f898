"""Encoding of events in journal rows: msgspec JSON, readable with the sqlite3 shell."""

from __future__ import annotations

import msgspec

from trafficcontrol.domain.events import AnyEvent
from trafficcontrol.errors import CorruptJournalError

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode(event: AnyEvent) -> bytes:
    return _encoder.encode(event)


def decode(body: bytes, *, where: str) -> AnyEvent:
    try:
        event: AnyEvent = _decoder.decode(body)
        return event
    except msgspec.DecodeError as exc:
        raise CorruptJournalError(f"{where}: cannot decode event: {exc}") from exc
