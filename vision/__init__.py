"""Eyes: camera frames in, the frames (or scene notes) that fit a turn out.

:mod:`vision.frames` takes camera frames in, :mod:`vision.select` chooses the ones a turn
needs (pure), :mod:`vision.scene` turns a frame into short notes for a text-only model, and
:mod:`vision.images` decodes and encodes images within limits. The model that looks at them
is in :mod:`llm`.
"""
