"""Backup planning (etcdpy_operator.backup): schedule, names, retention and the latched state machine.

Table-driven: each case is an observed situation (including what a crash or a failure leaves behind) and
the one step the planner must take; no cluster, no clock.
"""

from __future__ import annotations

import datetime as dt

import pytest
from etcdpy_operator.backup import (
    MAX_RETRIES,
    BackupObserved,
    BackupPodObs,
    BackupSpec,
    BackupStatus,
    BKind,
    InFlight,
    Schedule,
    StoredBackup,
    Trigger,
    after_failure,
    after_success,
    backup_condition,
    backup_file_name,
    parse_backup_file_name,
    parse_duration,
    plan_backup,
    prune_victims,
    retry_delay,
)

T0 = dt.datetime(2026, 12, 3, 10, 0, 30, tzinfo=dt.UTC)


def at(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/5 * * * *", "2026-12-03T10:00:30Z", "2026-12-03T10:05:00Z"),
        ("*/5 * * * *", "2026-12-03T10:05:00Z", "2026-12-03T10:10:00Z"),
        ("0 3 * * *", "2026-12-03T10:00:30Z", "2026-12-04T03:00:00Z"),
        ("30 2 1 * *", "2026-12-03T10:00:30Z", "2027-01-01T02:30:00Z"),
        ("0 0 * * 0", "2026-12-03T10:00:30Z", "2026-12-06T00:00:00Z"),  # Sunday
        ("0 0 * * 7", "2026-12-03T10:00:30Z", "2026-12-06T00:00:00Z"),  # 7 is Sunday too
        ("0 0 13 * 5", "2026-12-03T10:00:30Z", "2026-12-04T00:00:00Z"),  # either day field (Friday the 4th)
        ("@hourly", "2026-12-03T10:00:30Z", "2026-12-03T11:00:00Z"),
        ("@daily", "2026-12-31T23:59:00Z", "2027-01-01T00:00:00Z"),
        ("0 0 29 2 *", "2026-12-03T10:00:30Z", "2028-02-29T00:00:00Z"),
        ("10-20/5 1,2 * * *", "2026-12-03T01:20:00Z", "2026-12-03T02:10:00Z"),
        ("@every 30s", "2026-12-03T10:00:30Z", "2026-12-03T10:01:00Z"),
        ("@every 1h30m", "2026-12-03T10:00:30Z", "2026-12-03T11:30:30Z"),
    ],
)
def test_schedule_next(expr: str, after: str, expected: str) -> None:
    assert Schedule.parse(expr).next_after(at(after)) == at(expected)


@pytest.mark.parametrize("expr", ["", "* * * *", "60 * * * *", "* 24 * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *",
                                  "@every", "@every 0s", "@every 5x"])
def test_schedule_refused(expr: str) -> None:
    with pytest.raises(ValueError):
        Schedule.parse(expr)


def test_durations() -> None:
    assert parse_duration("7d") == dt.timedelta(days=7)
    assert parse_duration("1h30m") == dt.timedelta(minutes=90)
    assert parse_duration("1.5s") == dt.timedelta(seconds=1.5)
    for bad in ("", "5", "h", "1h 2m", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_file_names_round_trip_and_foreign_names() -> None:
    name = backup_file_name("demo", T0, 1234)
    assert name == "demo-20261203T100030Z-r1234.db"
    assert parse_backup_file_name("demo", name) == (T0.replace(microsecond=0), 1234)
    assert parse_backup_file_name("dem", name) is None
    assert parse_backup_file_name("demo", name + ".json") is None
    assert parse_backup_file_name("demo", ".inprogress-demo-12.db") is None
    # a cluster whose name extends another's is not confused with it
    assert parse_backup_file_name("demo", backup_file_name("demo-2", T0, 5)) is None


def _stored(*hours_ago: int, scheduled: bool = True) -> list[StoredBackup]:
    return [StoredBackup(backup_file_name("c", T0 - dt.timedelta(hours=h), 10 + h), T0 - dt.timedelta(hours=h),
                         scheduled) for h in hours_ago]


@pytest.mark.parametrize(
    ("hours", "max_count", "max_age_h", "victim_hours"),
    [
        ([0, 1, 2, 3], 2, None, [2, 3]),
        ([0, 1, 2, 3], 0, None, []),
        ([0, 1, 2, 3], 0, 1.5, [2, 3]),
        ([0, 1, 2, 3], 3, 2.5, [3]),
        ([0], 1, 0.1, []),  # the newest is kept whatever the limits
        ([0, 5], 5, 0.5, [5]),
    ],
)
def test_prune_victims(hours: list[int], max_count: int, max_age_h: float | None, victim_hours: list[int]) -> None:
    stored = _stored(*hours)
    newest = stored[0].name
    age = dt.timedelta(hours=max_age_h) if max_age_h is not None else None
    victims = prune_victims(stored, newest, T0, max_count, age)
    assert sorted(victims) == sorted(s.name for s in _stored(*victim_hours))


def test_prune_never_without_the_new_verified_backup_and_never_on_demand_ones() -> None:
    stored = _stored(1, 2, 3)
    assert prune_victims(stored, "c-20990101T000000Z-r1.db", T0, 1, None) == []  # the new one is not verified
    on_demand = _stored(2, scheduled=False)
    mixed = _stored(0, 1) + on_demand
    assert prune_victims(mixed, mixed[0].name, T0, 1, dt.timedelta(minutes=1)) == [mixed[1].name]
    # never a backup newer than the one just verified (a clock step back)
    newer = StoredBackup(backup_file_name("c", T0 + dt.timedelta(hours=1), 99), T0 + dt.timedelta(hours=1))
    assert prune_victims([newer, *_stored(0)], _stored(0)[0].name, T0, 1, None) == []


SPEC = BackupSpec(schedule="*/5 * * * *", max_count=3)
NEXT = "2026-12-03T10:05:00Z"


def obs(**kw: object) -> BackupObserved:
    base: dict[str, object] = {
        "cluster": "c", "now": T0, "spec": SPEC, "status": BackupStatus(next_scheduled=NEXT), "healthy_members": ("c-1", "c-0")
    }
    base.update(kw)
    return BackupObserved(**base)  # type: ignore[arg-type]


FLIGHT = InFlight(pod="c-backup-s20261203100500", trigger=Trigger.SCHEDULED, started_at="2026-12-03T10:05:00Z",
                  scheduled_for=NEXT)
LATER = at("2026-12-03T10:05:01Z")


@pytest.mark.parametrize(
    ("name", "o", "kind"),
    [
        ("no spec, no requests", obs(spec=None), BKind.NOOP),
        ("no spec, a request", obs(spec=None, requests=("b1",)), BKind.REJECT),
        ("template volume missing", obs(claim_exists=False), BKind.CREATE_CLAIM),
        ("existing claim missing is not created", obs(spec=BackupSpec(schedule="@hourly", claim_name="mine"),
                                                      claim_exists=False, status=BackupStatus()), BKind.SET_NEXT),
        ("first schedule stored", obs(status=BackupStatus()), BKind.SET_NEXT),
        ("not due", obs(), BKind.NOOP),
        ("due", obs(now=LATER), BKind.LATCH),
        ("due, no healthy member", obs(now=LATER, healthy_members=()), BKind.SKIP),
        ("due, not bootstrapped", obs(now=LATER, cluster_ready=False), BKind.WAIT),
        ("suspended", obs(now=LATER, spec=BackupSpec(schedule="*/5 * * * *", suspend=True)), BKind.NOOP),
        ("on demand", obs(requests=("b1",)), BKind.LATCH),
        ("on demand, no healthy member", obs(requests=("b1",), healthy_members=()), BKind.WAIT),
        ("latched, no Pod yet (crash after latch)", obs(status=BackupStatus(in_flight=FLIGHT)), BKind.CREATE_POD),
        ("latched, Pod running", obs(status=BackupStatus(in_flight=FLIGHT),
                                     pods={FLIGHT.pod: BackupPodObs(FLIGHT.pod, "Running")}), BKind.WAIT),
        ("latched, Pod done", obs(status=BackupStatus(in_flight=FLIGHT),
                                  pods={FLIGHT.pod: BackupPodObs(FLIGHT.pod, "Succeeded")}), BKind.COLLECT),
        ("latched, Pod failed", obs(status=BackupStatus(in_flight=FLIGHT),
                                    pods={FLIGHT.pod: BackupPodObs(FLIGHT.pod, "Failed")}), BKind.COLLECT),
        ("latched, Pod vanished after creation", obs(status=BackupStatus(in_flight=InFlight(
            pod=FLIGHT.pod, trigger=Trigger.SCHEDULED, started_at=FLIGHT.started_at, member="c-1"))), BKind.FAIL),
        ("latched, no member to create the Pod", obs(status=BackupStatus(in_flight=FLIGHT), healthy_members=()),
         BKind.FAIL),
        ("latched, Pod stuck too long", obs(now=T0 + dt.timedelta(hours=1), status=BackupStatus(in_flight=FLIGHT),
                                            pods={FLIGHT.pod: BackupPodObs(FLIGHT.pod, "Running")}), BKind.FAIL),
        ("finished Pod left over", obs(pods={"c-backup-s1": BackupPodObs("c-backup-s1", "Succeeded")}),
         BKind.DELETE_POD),
        ("left-over Pod going", obs(pods={"c-backup-s1": BackupPodObs("c-backup-s1", "Succeeded", deleting=True)}),
         BKind.NOOP),
    ],
)
def test_plan_backup(name: str, o: BackupObserved, kind: BKind) -> None:
    assert plan_backup(o).kind is kind, name


def test_never_two_backups_at_once() -> None:
    """While one is latched, nothing else starts: a due slot and a request both wait for it."""
    o = obs(now=LATER, requests=("b1",), status=BackupStatus(in_flight=FLIGHT, next_scheduled=NEXT),
            pods={FLIGHT.pod: BackupPodObs(FLIGHT.pod, "Running")})
    assert plan_backup(o).kind is BKind.WAIT


def test_latch_names_a_deterministic_pod_and_the_slot() -> None:
    a = plan_backup(obs(now=LATER))
    assert a.in_flight is not None
    assert a.in_flight.pod == "c-backup-s20261203100501"
    assert a.in_flight.scheduled_for == NEXT
    assert InFlight.from_status(a.in_flight.to_status()) == a.in_flight
    assert plan_backup(obs(now=LATER)).in_flight == a.in_flight  # same inputs, same latch


def test_create_pod_prefers_the_first_healthy_member() -> None:
    a = plan_backup(obs(status=BackupStatus(in_flight=FLIGHT), healthy_members=("c-2", "c-0")))
    assert a.kind is BKind.CREATE_POD and a.member == "c-2" and a.pod == FLIGHT.pod


def test_failure_backs_off_and_retries_then_success_resets() -> None:
    o = obs(now=LATER)
    fields = after_failure(o, FLIGHT, NEXT, "member down")
    assert fields["consecutiveFailures"] == 1 and fields["inFlight"] is None
    assert fields["retryAt"] == "2026-12-03T10:05:11Z"
    assert fields["nextScheduledTime"] == "2026-12-03T10:10:00Z"
    st = BackupStatus(next_scheduled=fields["nextScheduledTime"], failures=1, retry_at=fields["retryAt"],
                      last_failure=fields["lastFailure"])
    assert plan_backup(obs(now=at("2026-12-03T10:05:05Z"), status=st)).kind is BKind.NOOP
    retry = plan_backup(obs(now=at("2026-12-03T10:05:11Z"), status=st))
    assert retry.kind is BKind.LATCH and retry.in_flight is not None
    assert retry.in_flight.scheduled_for == NEXT and retry.in_flight.attempt == 2
    ok = after_success(obs(now=at("2026-12-03T10:05:20Z"), status=st), retry.in_flight)
    assert ok["consecutiveFailures"] == 0 and ok["retryAt"] is None and ok["inFlight"] is None


def test_retries_stop_after_the_limit_but_the_schedule_goes_on() -> None:
    st = BackupStatus(next_scheduled="2026-12-03T10:10:00Z", failures=MAX_RETRIES, retry_at="2026-12-03T10:00:00Z")
    assert plan_backup(obs(now=LATER, status=st)).kind is BKind.NOOP
    assert plan_backup(obs(now=at("2026-12-03T10:10:00Z"), status=st)).kind is BKind.LATCH
    assert after_failure(obs(status=st), FLIGHT, NEXT, "x")["retryAt"] is None


def test_on_demand_failure_does_not_touch_the_schedule() -> None:
    f = InFlight(pod="p", trigger=Trigger.ON_DEMAND, started_at="2026-12-03T10:00:00Z", request="b1")
    assert after_failure(obs(), f, "", "x") == {"inFlight": None}


def test_retry_delay_grows_and_is_capped() -> None:
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3)] == [10, 20, 40]
    assert retry_delay(30) == dt.timedelta(minutes=10)


def test_backup_condition() -> None:
    assert backup_condition({}, None, "t", None) is None
    c = backup_condition({}, SPEC, "t1", None)
    assert c is not None and c["status"] == "False" and c["reason"] == "NoBackupYet"
    ok = backup_condition({"lastSuccessfulBackup": {"name": "n", "revision": 5, "time": "x"}}, SPEC, "t2", c)
    assert ok is not None and ok["status"] == "True" and ok["lastTransitionTime"] == "t2"
    again = backup_condition({"lastSuccessfulBackup": {"name": "n2"}}, SPEC, "t3", ok)
    assert again is not None and again["lastTransitionTime"] == "t2"
    bad = backup_condition({"consecutiveFailures": 2, "lastFailure": {"message": "member down"}}, SPEC, "t4", again)
    assert bad is not None and bad["reason"] == "BackupFailed" and "member down" in bad["message"]
    invalid = backup_condition({}, BackupSpec(schedule="61 * * * *"), "t5", None)
    assert invalid is not None and invalid["reason"] == "InvalidBackupSpec"


def test_spec_from_body() -> None:
    assert BackupSpec.from_body({}) is None
    s = BackupSpec.from_body({"backup": {"schedule": "@daily", "retention": {"maxCount": 4, "maxAge": "7d"},
                                         "volume": {"claimName": "keep"}}})
    assert s == BackupSpec(schedule="@daily", max_count=4, max_age="7d", claim_name="keep")
    assert s is not None and s.claim("c") == "keep" and not s.owns_claim
    t = BackupSpec.from_body({"backup": {"volume": {"claimTemplate": {"size": "2Gi"}}}})
    assert t is not None and t.claim("c") == "c-backups" and t.owns_claim and t.template_size == "2Gi"
