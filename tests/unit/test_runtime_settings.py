"""The garbage-collector and event-loop settings: unset means ours, the other choice is kept, a typo is refused."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from etcdpy.cli import event_loop_setting
from etcdpy.gctuning import THRESHOLDS, gc_setting, tune_after_startup


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_gc_unset_or_tuned_raises_the_thresholds(restore_gc: None) -> None:
    assert gc_setting({}) == "tuned"
    assert gc_setting({"ETCDPY_GC": " Tuned "}) == "tuned"
    gc.set_threshold(700, 10, 10)
    assert tune_after_startup(gc_setting({})) is True
    assert gc.get_threshold() == THRESHOLDS
    assert gc.get_freeze_count() > 0


def test_gc_default_keeps_cpythons(restore_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    assert gc_setting({"ETCDPY_GC": "default"}) == "default"
    assert tune_after_startup("default") is False
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize("raw", ["off", "1", "defaults"])
def test_gc_typo_is_refused_naming_the_choices(raw: str) -> None:
    with pytest.raises(ValueError) as info:
        gc_setting({"ETCDPY_GC": raw})
    assert str(info.value) == f"ETCDPY_GC must be one of tuned, default, got {raw!r}"


def test_event_loop_choices() -> None:
    assert event_loop_setting({}) == "uvloop"
    assert event_loop_setting({"ETCDPY_EVENT_LOOP": "asyncio"}) == "asyncio"
    assert event_loop_setting({"ETCDPY_EVENT_LOOP": " UVLOOP "}) == "uvloop"


@pytest.mark.parametrize("raw", ["uv", "trio", "async io"])
def test_event_loop_typo_is_refused_naming_the_choices(raw: str) -> None:
    with pytest.raises(ValueError) as info:
        event_loop_setting({"ETCDPY_EVENT_LOOP": raw})
    assert str(info.value) == f"ETCDPY_EVENT_LOOP must be one of uvloop, asyncio, got {raw!r}"
