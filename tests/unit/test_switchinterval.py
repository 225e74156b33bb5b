"""The member's GIL switch interval: ours by default, overridable, a bad value refused."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from etcdpy.switchinterval import SWITCH_INTERVAL_SECONDS, switch_interval_setting, tune_switch_interval


@pytest.fixture(autouse=True)
def restore_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_default_is_ours() -> None:
    sys.setswitchinterval(0.005)
    assert switch_interval_setting({}) == SWITCH_INTERVAL_SECONDS
    tune_switch_interval(switch_interval_setting({}))
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_SECONDS)


def test_override_and_default_keyword() -> None:
    assert switch_interval_setting({"ETCDPY_SWITCH_INTERVAL": " 0.002 "}) == 0.002
    tune_switch_interval(0.002)
    assert sys.getswitchinterval() == pytest.approx(0.002)
    sys.setswitchinterval(0.005)
    assert switch_interval_setting({"ETCDPY_SWITCH_INTERVAL": "Default"}) is None
    tune_switch_interval(None)
    assert sys.getswitchinterval() == pytest.approx(0.005)


@pytest.mark.parametrize("raw", ["fast", "0", "-1", "5", "nan", "inf"])
def test_a_bad_value_is_refused_with_what_would_do(raw: str) -> None:
    with pytest.raises(ValueError) as info:
        switch_interval_setting({"ETCDPY_SWITCH_INTERVAL": raw})
    assert str(info.value) == (
        f"ETCDPY_SWITCH_INTERVAL must be a number of seconds in (0, 1] or 'default', got {raw!r}"
    )
