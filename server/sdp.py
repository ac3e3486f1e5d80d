"""Checks on an SDP offer before aiortc sees it: pure, no I/O.

aiortc's parser trusts its input: a bad ``a=setup``, a payload type it cannot map, an
``fmtp`` for a payload type the m-line lacks or a short ``c=`` line raise deep inside it, and
it answers any number of m-lines with candidates for each. :func:`check_offer` refuses those
with a :class:`SdpError` that names the line, so the server answers 400 with a clear message
(the server still turns anything aiortc raises into a 400, as a second net).

Limits: :data:`MAX_SDP_BYTES` (64 KiB), :data:`MAX_MEDIA_SECTIONS` (8 m-lines),
:data:`MAX_CANDIDATES` (64 candidates in all).
"""

from __future__ import annotations

import re

MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA_SECTIONS = 8
MAX_CANDIDATES = 64

SETUP_ROLES = frozenset({"actpass", "active", "passive", "holdconn"})
MEDIA_KINDS = frozenset({"audio", "video", "application"})
CANDIDATE_TYPES = frozenset({"host", "srflx", "prflx", "relay"})
_LINE = re.compile(r"^[a-z]=")
_FINGERPRINT = re.compile(r"^[A-Za-z0-9-]+ [0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+$")
_VISIBLE = re.compile(r"^[\x21-\x7e]+$")


class SdpError(ValueError):
    """An offer the server refuses; ``code`` is ``invalid_sdp`` or ``no_audio``."""

    def __init__(self, message: str, code: str = "invalid_sdp"):
        super().__init__(message)
        self.code, self.message = code, message


class _Section:
    def __init__(self, kind: str, port: int, proto: str, formats: list[str], line: int):
        self.kind, self.port, self.proto, self.formats, self.line = (
            kind,
            port,
            proto,
            formats,
            line,
        )
        self.attrs: set[str] = set()


def check_offer(sdp: str) -> None:
    """Raise :class:`SdpError` unless ``sdp`` is an offer the server can safely hand aiortc."""
    if not sdp.strip():
        raise SdpError("the offer SDP is empty")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise SdpError(f"the offer SDP is larger than {MAX_SDP_BYTES} bytes")
    lines = [line.strip() for line in sdp.strip().splitlines()]
    if lines[0] != "v=0":
        raise SdpError("not an SDP offer: it must start with 'v=0'")
    session_attrs: set[str] = set()
    sections: list[_Section] = []
    candidates = 0
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        if not _LINE.match(line):
            raise SdpError(f"SDP line {number} is not '<letter>=<value>': {_show(line)}")
        kind, value = line[0], line[2:]
        current = sections[-1] if sections else None
        if kind == "m":
            if len(sections) == MAX_MEDIA_SECTIONS:
                raise SdpError(f"the offer has more than {MAX_MEDIA_SECTIONS} media sections")
            sections.append(_media(value, number))
        elif kind == "c":
            _connection(value, number)
        elif kind == "a":
            name, _, arg = value.partition(":")
            (current.attrs if current else session_attrs).add(name)
            if name == "candidate":
                candidates += 1
                if candidates > MAX_CANDIDATES:
                    raise SdpError(f"the offer has more than {MAX_CANDIDATES} ICE candidates")
                _candidate(arg, number)
            elif name == "setup" and arg not in SETUP_ROLES:
                raise SdpError(
                    f"SDP line {number}: a=setup must be one of "
                    f"{', '.join(sorted(SETUP_ROLES))}, not {_show(arg)}"
                )
            elif name == "fingerprint" and not _FINGERPRINT.match(arg):
                raise SdpError(f"SDP line {number}: a malformed DTLS fingerprint {_show(arg)}")
            elif name in ("rtpmap", "fmtp", "rtcp-fb") and current is not None:
                _payload_attr(name, arg, current, number)
    _whole(sections, session_attrs)


def _media(value: str, number: int) -> _Section:
    fields = value.split()
    if len(fields) < 4:
        raise SdpError(
            f"SDP line {number}: an m-line needs '<media> <port> <proto> <format>...', "
            f"got {_show('m=' + value)}"
        )
    kind, port, proto, formats = fields[0], fields[1], fields[2], fields[3:]
    if kind not in MEDIA_KINDS:
        raise SdpError(f"SDP line {number}: media {_show(kind)} is not audio, video or application")
    port = port.split("/", 1)[0]
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise SdpError(f"SDP line {number}: the port {_show(fields[1])} is not 0-65535")
    if kind == "application":
        if "SCTP" not in proto:
            raise SdpError(f"SDP line {number}: an application section must be DTLS/SCTP")
    else:
        if "RTP" not in proto:
            raise SdpError(f"SDP line {number}: {kind} must be RTP, not {_show(proto)}")
        for fmt in formats:
            _payload_type(fmt, number)
    return _Section(kind, int(port), proto, formats, number)


def _payload_type(fmt: str, number: int) -> int:
    if not fmt.isascii() or not fmt.isdigit():
        raise SdpError(f"SDP line {number}: payload type {_show(fmt)} is not a number")
    pt = int(fmt)
    if pt > 127:
        raise SdpError(f"SDP line {number}: payload type {pt} is out of range (0-127)")
    if 64 <= pt <= 95:
        raise SdpError(
            f"SDP line {number}: payload type {pt} is not allowed: 64-95 clash with RTCP "
            "packet types on a multiplexed transport (RFC 5761)"
        )
    return pt


def _payload_attr(name: str, arg: str, section: _Section, number: int) -> None:
    fmt, _, rest = arg.partition(" ")
    if name == "rtcp-fb" and fmt == "*":
        return
    if section.kind == "application":
        return
    if fmt not in section.formats:
        raise SdpError(
            f"SDP line {number}: a={name} for payload type {_show(fmt)}, "
            f"which the m-line (line {section.line}) does not list"
        )
    if name == "rtpmap":
        parts = rest.strip().split("/")
        if len(parts) < 2 or not parts[0]:
            raise SdpError(
                f"SDP line {number}: a=rtpmap needs '<payload type> <encoding>/<clock rate>', "
                f"got {_show('a=rtpmap:' + arg)}"
            )
        for part in parts[1:3]:
            if not part.isascii() or not part.isdigit() or not 0 < int(part) <= 10_000_000:
                raise SdpError(
                    f"SDP line {number}: a=rtpmap clock rate and channels must be positive "
                    f"numbers, got {_show(rest)}"
                )


def _connection(value: str, number: int) -> None:
    fields = value.split()
    if len(fields) != 3 or fields[0] != "IN" or fields[1] not in ("IP4", "IP6") or not fields[2]:
        raise SdpError(
            f"SDP line {number}: a c= line needs 'IN IP4|IP6 <address>', got {_show('c=' + value)}"
        )


def _candidate(arg: str, number: int) -> None:
    bits = arg.split()
    ok = (
        len(bits) >= 8
        and all(_VISIBLE.match(b) for b in bits)
        and bits[1].isascii()
        and bits[1].isdigit()
        and bits[2].lower() in ("udp", "tcp")
        and bits[3].isascii()
        and bits[3].isdigit()
        and bits[5].isascii()
        and bits[5].isdigit()
        and int(bits[5]) <= 65535
        and bits[6] == "typ"
        and bits[7] in CANDIDATE_TYPES
    )
    if not ok:
        raise SdpError(
            f"SDP line {number}: a malformed ICE candidate {_show('a=candidate:' + arg)} "
            "(expected 'foundation component udp|tcp priority address port typ host|srflx|"
            "prflx|relay ...')"
        )


def _whole(sections: list[_Section], session_attrs: set[str]) -> None:
    active = [s for s in sections if s.port != 0]
    if not any(s.kind == "audio" for s in active):
        raise SdpError(
            "the offer has no audio: add a microphone track or an audio "
            "transceiver (the assistant answers with audio)",
            code="no_audio",
        )
    for need, what in (
        ("fingerprint", "a DTLS fingerprint (a=fingerprint), which DTLS needs"),
        ("ice-ufrag", "ICE credentials (a=ice-ufrag)"),
        ("ice-pwd", "ICE credentials (a=ice-pwd)"),
    ):
        if need in session_attrs:
            continue
        for s in active:
            if need not in s.attrs:
                raise SdpError(f"the {s.kind} section (line {s.line}) has no {what}")


def _show(text: str, limit: int = 60) -> str:
    """A piece of the offer, quoted and cut short, for an error message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
