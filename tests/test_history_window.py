"""The model's view of the history (``history_turns``): at most that many items, with a
start that stays put while the items after it fit, so the model input keeps its beginning
and llama.cpp reuses what it evaluated instead of re-reading the window at every reply."""

from __future__ import annotations

from conversation.history import Conversation, Item


def exchange(conv: Conversation, n: int) -> None:
    conv.add(Item(f"u{n}", "user", f"question {n}"))
    conv.add(Item(f"a{n}", "assistant", f"answer {n}"))


def seen(conv: Conversation, turns: int) -> list[str]:
    return [m.text for m in conv.messages("Be brief.", turns)[1:]]


def test_the_window_keeps_its_start_until_it_is_full_then_moves_on_by_half() -> None:
    conv = Conversation()
    views = []
    for n in range(1, 10):
        exchange(conv, n)
        views.append(seen(conv, 6))
    assert all(len(v) <= 6 for v in views)
    assert views[2] == [f"{w} {n}" for n in (1, 2, 3) for w in ("question", "answer")]
    # the 4th exchange overflows 6 items: the view moves on to the last 3
    assert views[3] == ["answer 3", "question 4", "answer 4"]
    # and keeps that start while it fits: the next view begins like this one
    assert views[4][:3] == views[3]
    assert views[5] == ["answer 5", "question 6", "answer 6"]
    starts = [v[0] for v in views]
    # 4 starts in 9 exchanges; a window sliding by one would have moved at each from the 4th
    assert starts == ["question 1"] * 3 + ["answer 3"] * 2 + ["answer 5"] * 2 + ["answer 7"] * 2


def test_a_deleted_start_or_no_limit_still_gives_a_bounded_view() -> None:
    conv = Conversation()
    for n in range(1, 6):
        exchange(conv, n)
    first = seen(conv, 4)
    assert len(first) <= 4
    conv.delete("a4")  # the item the view began with
    assert len(seen(conv, 4)) <= 4 and seen(conv, 4)[-1] == "answer 5"
    assert seen(conv, 0)[0] == "question 1"  # 0: everything, as before
