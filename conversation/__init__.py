"""The conversation engine, whatever the transport.

A :class:`~conversation.session.Session` is one person talking with seetalk: it takes
audio and camera frames in, hands what happens to the pure turn-taker
(:mod:`conversation.turns`), and speaks replies (:mod:`conversation.speaker`,
:mod:`conversation.reply`, :mod:`conversation.playout`) while keeping the history as heard
(:mod:`conversation.history`). Client events have one parser (:mod:`conversation.protocol`)
and one set of handlers (:mod:`conversation.client_events`); settings one validation
(:mod:`conversation.settings`). Transports (``server/``) see a session only through
:mod:`conversation.contract`.
"""
