"""The member's GIL switch interval: ours by default, overridable, never fatal."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from etcdpy.switchinterval import SWITCH_INTERVAL_SECONDS, tune_switch_interval


@pytest.fixture(autouse=True)
def restore_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_default_is_ours() -> None:
    sys.setswitchinterval(0.005)
    assert tune_switch_interval({}) == SWITCH_INTERVAL_SECONDS
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_SECONDS)


def test_override_and_default_keyword() -> None:
    assert tune_switch_interval({"ETCDPY_SWITCH_INTERVAL": "0.002"}) == 0.002
    assert sys.getswitchinterval() == pytest.approx(0.002)
    sys.setswitchinterval(0.005)
    assert tune_switch_interval({"ETCDPY_SWITCH_INTERVAL": "default"}) is None
    assert sys.getswitchinterval() == pytest.approx(0.005)


@pytest.mark.parametrize("raw", ["fast", "0", "-1", "5"])
def test_a_bad_value_leaves_cpythons_interval(raw: str) -> None:
    sys.setswitchinterval(0.005)
    assert tune_switch_interval({"ETCDPY_SWITCH_INTERVAL": raw}) is None
    assert sys.getswitchinterval() == pytest.approx(0.005)
