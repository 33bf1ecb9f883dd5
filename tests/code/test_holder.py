"""The served-model holder with stand-in loaders (no registry): a first model is picked up within a
second while nothing is served, whatever the poll interval; hooks run around the swap."""

from __future__ import annotations

import time

from pipeline.serving.holder import ModelHolder


def test_a_holder_with_nothing_to_serve_looks_every_second_then_at_its_interval():
    alias = {"version": None}
    lookups = []

    def lookup():
        lookups.append(time.monotonic())
        return alias["version"]

    swapped = []
    holder = ModelHolder(
        lambda version: f"model {version}", lookup, poll_seconds=60, after_swap=swapped.append
    )
    holder.start()
    try:
        time.sleep(1.5)
        alias["version"] = "1"  # the first training run promotes its model
        deadline = time.monotonic() + 5
        while holder.current is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.serving == "1" and holder.current.recommender == "model 1"
        assert [served.version for served in swapped] == ["1"]
        seen = len(lookups)
        time.sleep(2.5)
        assert len(lookups) == seen  # serving now: the next look is a poll interval away
    finally:
        holder.stop()
