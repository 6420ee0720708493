"""Inactive-topic deletion (Pulsar's brokerDeleteInactiveTopics* and the namespace policy
`inactiveTopicPolicies`), with the official client and the admin REST API."""

import uuid

import pytest

from conftest import Standalone, make_client, wait_for
from test_admin import http


@pytest.fixture
def gc_standalone(tmp_path, monkeypatch):
    # A check every second instead of every minute; the namespace policy sets the duration.
    monkeypatch.setenv("MAGNETAR_BROKER__DELETE_INACTIVE_TOPICS_FREQUENCY_S", "1")
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    yield s
    s.stop()


def topics_of(admin, ns):
    status, body, _ = http(admin, "GET", f"/admin/v2/persistent/{ns}")
    assert status == 200, body
    return set(body)


def test_inactive_topics_are_deleted_as_the_namespace_policy_says(gc_standalone):
    admin = gc_standalone.admin_url
    ns = f"public/gc-{uuid.uuid4().hex[:8]}"
    status, body, _ = http(admin, "PUT", f"/admin/v2/namespaces/{ns}")
    assert status in (200, 204), body
    policy = {
        "inactiveTopicDeleteMode": "delete_when_no_subscriptions",
        "maxInactiveDurationSeconds": 2,
        "deleteWhileInactive": True,
    }
    status, body, _ = http(admin, "POST", f"/admin/v2/namespaces/{ns}/inactiveTopicPolicies", policy)
    assert status == 204, body
    status, body, _ = http(admin, "GET", f"/admin/v2/namespaces/{ns}/inactiveTopicPolicies")
    assert (status, body) == (200, policy)

    client = make_client(gc_standalone.url)
    try:
        idle = f"persistent://{ns}/idle"
        subscribed = f"persistent://{ns}/subscribed"
        producing = f"persistent://{ns}/producing"
        c = client.subscribe(subscribed, "keep")
        c.close()  # the subscription stays without consumers
        live = client.create_producer(producing)
        live.send(b"still here")
        # Last: once it is deleted, the others have been checked past the same duration.
        p = client.create_producer(idle)
        p.send(b"gone soon")
        p.close()
        assert {idle, subscribed, producing} <= topics_of(admin, ns)

        assert wait_for(lambda: idle not in topics_of(admin, ns), timeout=30), \
            "an idle topic was not deleted"
        remaining = topics_of(admin, ns)
        assert subscribed in remaining, "a topic with a subscription counts as active"
        assert producing in remaining, "a topic with a producer counts as active"

        # Caught-up mode: a subscription without backlog no longer keeps its topic.
        policy["inactiveTopicDeleteMode"] = "delete_when_subscriptions_caught_up"
        status, body, _ = http(
            admin, "POST", f"/admin/v2/namespaces/{ns}/inactiveTopicPolicies", policy)
        assert status == 204, body
        backlog = f"persistent://{ns}/backlog"
        b = client.subscribe(backlog, "behind")
        b.close()
        bp = client.create_producer(backlog)
        bp.send(b"unread")
        bp.close()
        marker = f"persistent://{ns}/marker"
        mp = client.create_producer(marker)
        mp.close()
        assert wait_for(lambda: subscribed not in topics_of(admin, ns), timeout=30), \
            "a caught-up topic was not deleted"
        assert wait_for(lambda: marker not in topics_of(admin, ns), timeout=30)
        remaining = topics_of(admin, ns)
        assert backlog in remaining, "a subscription with a backlog keeps its topic"
        assert producing in remaining
        live.send(b"the producer still works")

        # Removing the policy falls back to the broker's (enabled, 1 s here, no subscriptions).
        status, body, _ = http(admin, "DELETE", f"/admin/v2/namespaces/{ns}/inactiveTopicPolicies")
        assert status == 204, body
        status, body, _ = http(admin, "GET", f"/admin/v2/namespaces/{ns}/inactiveTopicPolicies")
        assert status == 204, body
    finally:
        client.close()


def test_a_namespace_can_keep_its_inactive_topics(gc_standalone):
    admin = gc_standalone.admin_url
    ns = f"public/keep-{uuid.uuid4().hex[:8]}"
    status, body, _ = http(admin, "PUT", f"/admin/v2/namespaces/{ns}")
    assert status in (200, 204), body
    keep = {"inactiveTopicDeleteMode": "delete_when_no_subscriptions",
            "maxInactiveDurationSeconds": 0, "deleteWhileInactive": False}
    status, body, _ = http(admin, "POST", f"/admin/v2/namespaces/{ns}/inactiveTopicPolicies", keep)
    assert status == 204, body
    other = f"public/gone-{uuid.uuid4().hex[:8]}"
    status, body, _ = http(admin, "PUT", f"/admin/v2/namespaces/{other}")
    assert status in (200, 204), body
    client = make_client(gc_standalone.url)
    try:
        kept = f"persistent://{ns}/kept"
        gone = f"persistent://{other}/gone"
        for t in (kept, gone):
            p = client.create_producer(t)
            p.send(b"x")
            p.close()
        # The broker default (enabled, 1 s) deletes the other namespace's idle topic; the same
        # pass kept this one.
        assert wait_for(lambda: gone not in topics_of(admin, other), timeout=30)
        assert kept in topics_of(admin, ns)
    finally:
        client.close()
