"""Schemas with the official Python client: typed producers and consumers, versions per topic,
incompatible schemas refused with IncompatibleSchema, GET_SCHEMA, and the compatibility
strategies (broker default FULL, namespace policy `schemaCompatibilityStrategy`,
`isAllowAutoUpdateSchema`)."""

import json
import urllib.error
import urllib.request
import uuid

import _pulsar
import pulsar
import pytest
from pulsar.schema import AvroSchema, Integer, JsonSchema, Record, String, StringSchema

from conftest import Standalone, make_client, receive_all

try:
    import fastavro  # noqa: F401  (AvroSchema needs pulsar-client[avro])

    HAVE_AVRO = True
except ImportError:
    HAVE_AVRO = False
needs_avro = pytest.mark.skipif(not HAVE_AVRO, reason="pulsar-client[avro] not installed")

EARLIEST = pulsar.InitialPosition.Earliest


class Point(Record):
    name = String()
    x = Integer()


# Version 2 of Point: the same Avro record name, plus an optional field whose definition has a
# default (`required_default`), so that it passes the broker's default FULL compatibility check.
PointV2 = type(
    "Point",
    (Record,),
    {"_sorted_fields": True, "name": String(), "x": Integer(), "label": String(required_default=True)},
)


@pytest.mark.parametrize(
    "schema_class", [JsonSchema, pytest.param(AvroSchema, marks=needs_avro)], ids=["json", "avro"]
)
def test_typed_records_round_trip(client, topic, schema_class):
    producer = client.create_producer(topic, schema=schema_class(Point))
    consumer = client.subscribe(topic, "sub", schema=schema_class(Point), initial_position=EARLIEST)
    for i in range(5):
        producer.send(Point(name=f"p{i}", x=i))
    got = receive_all(consumer, 5)
    assert [(m.value().name, m.value().x) for m in got] == [(f"p{i}", i) for i in range(5)]
    # The producer's messages carry schema version 0 (8-byte big-endian long).
    assert got[0].schema_version() in (b"\x00" * 8, "\x00" * 8)


def test_string_schema_round_trip(client, topic):
    producer = client.create_producer(topic, schema=StringSchema())
    consumer = client.subscribe(topic, "sub", schema=StringSchema(), initial_position=EARLIEST)
    producer.send("hello")
    assert receive_all(consumer, 1)[0].value() == "hello"


def test_producer_with_another_schema_type_is_refused(client, topic):
    client.create_producer(topic, schema=JsonSchema(Point))
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(topic, schema=StringSchema())
    if HAVE_AVRO:
        with pytest.raises(pulsar.IncompatibleSchema):
            client.create_producer(topic, schema=AvroSchema(Point))
    # The same schema again is fine, and so is a schemaless (bytes) producer.
    client.create_producer(topic, schema=JsonSchema(Point)).send(Point(name="a", x=1))
    client.create_producer(topic).send(b"raw")


def test_consumer_with_another_schema_type_is_refused(client, topic):
    client.create_producer(topic, schema=StringSchema())
    with pytest.raises(pulsar.IncompatibleSchema):
        client.subscribe(topic, "sub", schema=JsonSchema(Point))
    client.subscribe(topic, "sub2", schema=StringSchema())


def test_json_consumer_reads_what_a_json_producer_wrote(client, topic):
    producer = client.create_producer(topic, schema=JsonSchema(Point))
    producer.send(Point(name="before", x=7))
    consumer = client.subscribe(topic, "sub", schema=JsonSchema(Point), initial_position=EARLIEST)
    value = receive_all(consumer, 1)[0].value()
    assert (value.name, value.x) == ("before", 7)


def test_get_schema_latest_and_by_version(client, topic):
    with pytest.raises(pulsar.TopicNotFound):
        client._client.get_schema_info(topic, -1)
    client.create_producer(topic, schema=JsonSchema(Point))
    # A new definition of the same type is a new version.
    p2 = client.create_producer(topic, schema=JsonSchema(PointV2))
    p2.send(PointV2(name="n", x=1, label="l"))
    latest = client._client.get_schema_info(topic, -1)
    assert "label" in latest.schema()
    first = client._client.get_schema_info(topic, 0)
    assert "label" not in first.schema() and '"x"' in first.schema()
    assert "label" in client._client.get_schema_info(topic, 1).schema()
    with pytest.raises(pulsar.TopicNotFound):
        client._client.get_schema_info(topic, 5)


def test_topic_without_schema_and_bytes_producer(client, topic):
    producer = client.create_producer(topic)
    consumer = client.subscribe(topic, "sub", initial_position=EARLIEST)
    producer.send(b"plain")
    assert receive_all(consumer, 1)[0].data() == b"plain"
    with pytest.raises(pulsar.TopicNotFound):
        client._client.get_schema_info(topic, -1)
    # A typed consumer on a topic that has data but no schema is let in (as Pulsar does).
    client.subscribe(topic, "typed", schema=StringSchema())


class AutoConsume(pulsar.schema.Schema):
    """The C++ client's AUTO_CONSUME schema type (the Python wrapper has no class for it)."""

    def __init__(self):
        super().__init__(bytes, _pulsar.SchemaType.AUTO_CONSUME, None, "AUTO_CONSUME")

    def encode(self, obj):
        return obj

    def decode(self, data):
        return data


def test_auto_consume_consumer_reads_a_json_topic(client, topic):
    producer = client.create_producer(topic, schema=JsonSchema(Point))
    producer.send(Point(name="auto", x=3))
    consumer = client.subscribe(topic, "auto", schema=AutoConsume(), initial_position=EARLIEST)
    msg = receive_all(consumer, 1)[0]
    assert b'"auto"' in msg.data()
    # What an AUTO_CONSUME consumer then asks for: the writer's schema by its version.
    info = client._client.get_schema_info(topic, 0)
    assert '"x"' in info.schema()
    # A bytes producer may still write to the typed topic.
    client.create_producer(topic, schema=pulsar.schema.BytesSchema()).send(b"raw")


def test_partitions_share_the_schema_of_their_topic(client, topic):
    client.create_producer(f"{topic}-partition-0", schema=JsonSchema(Point))
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(f"{topic}-partition-1", schema=StringSchema())
    client.create_producer(f"{topic}-partition-1", schema=JsonSchema(Point))
    assert '"x"' in client._client.get_schema_info(topic, -1).schema()


# --- Compatibility strategies -------------------------------------------------------------------


def evo(**fields):
    """A version of the Avro record `Evo`: every version shares the record name, as the
    versions of one Java/Python class do."""
    return type("Evo", (Record,), dict(fields))


EvoA = evo(a=String())
# + an optional field with a default in its definition: readable both ways (FULL).
EvoAB = evo(a=String(), b=Integer(required_default=True))
# + a required field without default: the new schema cannot read old data (not BACKWARD).
EvoAC = evo(a=String(), c=Integer(required=True))

SCHEMA_CLASSES = [JsonSchema, pytest.param(AvroSchema, marks=needs_avro)]
SCHEMA_IDS = ["json", "avro"]


def http(admin_url, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(admin_url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    return status, (json.loads(raw) if raw else None)


def namespace_with(admin_url, strategy=None, auto_update=None):
    """A fresh namespace of tenant `public` with the given schema policies (None: unset)."""
    ns = f"public/schema-{uuid.uuid4().hex[:8]}"
    status, body = http(admin_url, "PUT", f"/admin/v2/namespaces/{ns}")
    assert status == 204, body
    if strategy is not None:
        path = f"/admin/v2/namespaces/{ns}/schemaCompatibilityStrategy"
        status, body = http(admin_url, "PUT", path, strategy)
        assert status == 204, body
        assert http(admin_url, "GET", path) == (200, strategy)
    if auto_update is not None:
        path = f"/admin/v2/namespaces/{ns}/isAllowAutoUpdateSchema"
        status, body = http(admin_url, "POST", path, auto_update)
        assert status == 204, body
        assert http(admin_url, "GET", path) == (200, auto_update)
    return ns


def topic_in(ns):
    return f"persistent://{ns}/t-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("schema_class", SCHEMA_CLASSES, ids=SCHEMA_IDS)
def test_default_full_accepts_an_optional_field_and_refuses_a_required_one(
    client, topic, schema_class
):
    client.create_producer(topic, schema=schema_class(EvoA))
    producer = client.create_producer(topic, schema=schema_class(EvoAB))
    producer.send(EvoAB(a="x", b=1))
    assert "\"b\"" in client._client.get_schema_info(topic, 1).schema()
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(topic, schema=schema_class(EvoAC))
    # Nothing was registered for the refused schema.
    with pytest.raises(pulsar.TopicNotFound):
        client._client.get_schema_info(topic, 2)


def test_default_strategy_of_a_namespace_is_undefined(standalone):
    ns = namespace_with(standalone.admin_url)
    path = f"/admin/v2/namespaces/{ns}/schemaCompatibilityStrategy"
    assert http(standalone.admin_url, "GET", path) == (200, "UNDEFINED")
    assert http(standalone.admin_url, "PUT", path, "SIDEWAYS")[0] == 412
    path = f"/admin/v2/namespaces/{ns}/isAllowAutoUpdateSchema"
    assert http(standalone.admin_url, "GET", path) == (200, True)


@pytest.mark.parametrize("schema_class", SCHEMA_CLASSES, ids=SCHEMA_IDS)
def test_always_compatible_namespace_accepts_any_new_schema(standalone, client, schema_class):
    topic = topic_in(namespace_with(standalone.admin_url, "ALWAYS_COMPATIBLE"))
    client.create_producer(topic, schema=schema_class(EvoA))
    client.create_producer(topic, schema=schema_class(EvoAC)).send(EvoAC(a="x", c=3))
    assert '"c"' in client._client.get_schema_info(topic, -1).schema()


def test_backward_allows_removing_a_field_forward_does_not(standalone, client):
    ns_backward = namespace_with(standalone.admin_url, "BACKWARD")
    ns_forward = namespace_with(standalone.admin_url, "FORWARD")
    t = topic_in(ns_backward)
    client.create_producer(t, schema=JsonSchema(EvoAC))
    # BACKWARD: the new schema reads old data (it just ignores c).
    client.create_producer(t, schema=JsonSchema(EvoA))
    # ...but a new required field cannot be read from old data.
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(t, schema=JsonSchema(evo(a=String(), d=Integer(required=True))))
    t = topic_in(ns_forward)
    client.create_producer(t, schema=JsonSchema(EvoAC))
    # FORWARD: readers of version 0 need c, which the new schema's data lacks.
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(t, schema=JsonSchema(EvoA))
    # Adding a required field is fine for old readers (they ignore it).
    client.create_producer(
        t, schema=JsonSchema(evo(a=String(), c=Integer(required=True), d=Integer(required=True)))
    )


@needs_avro
def test_forward_accepts_a_required_field_in_a_renamed_record(standalone, client):
    """As the official client's test_schema_evolve: each version is its own class, so the
    Avro record names differ; Pulsar matches records by their fields."""
    user1 = type("User1", (Record,), {"name": String(), "age": Integer()})
    user2 = type(
        "User2", (Record,), {"_sorted_fields": True, "name": String(), "age": Integer(required=True)}
    )
    t = topic_in(namespace_with(standalone.admin_url, "FORWARD"))
    producer1 = client.create_producer(t, schema=AvroSchema(user1))
    consumer = client.subscribe(t, "sub", schema=AvroSchema(user1), initial_position=EARLIEST)
    producer2 = client.create_producer(t, schema=AvroSchema(user2))
    for i in range(3):
        producer1.send(user1(name=f"one-{i}", age=100 + i))
        producer2.send(user2(name=f"two-{i}", age=200 + i))
    got = [(m.value().name, m.value().age) for m in receive_all(consumer, 6)]
    expected = []
    for i in range(3):
        expected += [(f"one-{i}", 100 + i), (f"two-{i}", 200 + i)]
    assert got == expected


@needs_avro
def test_default_full_accepts_defaults_added_under_another_record_name(client, topic):
    """As the official client's test_avro_required_default."""
    plain = type("Example", (Record,), {"a": Integer(), "b": String(), "c": Integer(required=True)})
    defaults = type(
        "ExampleRequiredDefault",
        (Record,),
        {
            "_sorted_fields": True,
            "a": Integer(required_default=True),
            "b": String(required_default=True),
            "c": Integer(required=True, default=0, required_default=True),
        },
    )
    client.create_producer(topic, schema=AvroSchema(plain)).close()
    client.create_producer(topic, schema=AvroSchema(defaults)).close()
    assert "ExampleRequiredDefault" in client._client.get_schema_info(topic, 1).schema()


def test_full_transitive_checks_every_version(standalone, client):
    v0 = evo(a=String())
    v1 = evo(a=String(), b=Integer(required=True, default=0, required_default=True))
    v2 = evo(a=String(), b=Integer(required=True))
    # v2 and v1 read each other (b present in both), but v2 cannot read v0's data.
    t = topic_in(namespace_with(standalone.admin_url, "FULL"))
    for v in (v0, v1, v2):
        client.create_producer(t, schema=JsonSchema(v))
    t = topic_in(namespace_with(standalone.admin_url, "FULL_TRANSITIVE"))
    client.create_producer(t, schema=JsonSchema(v0))
    client.create_producer(t, schema=JsonSchema(v1))
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(t, schema=JsonSchema(v2))


def test_auto_update_disabled_refuses_new_versions_but_allows_existing_ones(standalone, client):
    ns = namespace_with(standalone.admin_url)
    t = topic_in(ns)
    client.create_producer(t, schema=JsonSchema(EvoA))
    path = f"/admin/v2/namespaces/{ns}/isAllowAutoUpdateSchema"
    assert http(standalone.admin_url, "POST", path, False)[0] == 204
    assert http(standalone.admin_url, "GET", path) == (200, False)
    # The registered schema is still fine, for producers and consumers.
    client.create_producer(t, schema=JsonSchema(EvoA)).send(EvoA(a="still"))
    client.subscribe(t, "sub", schema=JsonSchema(EvoA))
    # A compatible new version is refused all the same.
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(t, schema=JsonSchema(EvoAB))
    assert http(standalone.admin_url, "POST", path, True)[0] == 204
    client.create_producer(t, schema=JsonSchema(EvoAB))


def test_consumer_must_read_the_latest_version(client, topic):
    client.create_producer(topic, schema=JsonSchema(EvoA)).send(EvoA(a="v0"))
    # A reader needing c (no default) cannot read version 0's data.
    with pytest.raises(pulsar.IncompatibleSchema):
        client.subscribe(topic, "needs-c", schema=JsonSchema(EvoAC))
    # A reader with an optional field can; it is not registered by subscribing.
    consumer = client.subscribe(
        topic, "optional-b", schema=JsonSchema(EvoAB), initial_position=EARLIEST
    )
    assert receive_all(consumer, 1)[0].value().a == "v0"
    with pytest.raises(pulsar.TopicNotFound):
        client._client.get_schema_info(topic, 1)


def test_broker_default_strategy_comes_from_the_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGNETAR_BROKER__SCHEMA_COMPATIBILITY_STRATEGY", "ALWAYS_COMPATIBLE")
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    try:
        c = make_client(s.url)
        try:
            t = f"persistent://public/default/t-{uuid.uuid4().hex[:8]}"
            c.create_producer(t, schema=JsonSchema(EvoA))
            c.create_producer(t, schema=JsonSchema(EvoAC))
            # A namespace policy overrides the broker default.
            t = topic_in(namespace_with(s.admin_url, "FULL"))
            c.create_producer(t, schema=JsonSchema(EvoA))
            with pytest.raises(pulsar.IncompatibleSchema):
                c.create_producer(t, schema=JsonSchema(EvoAC))
        finally:
            c.close()
    finally:
        s.stop()


def schemas_path(topic):
    """`persistent://t/ns/x` → `/admin/v2/schemas/t/ns/x/schema` (pulsar-admin `schemas …`)."""
    return "/admin/v2/schemas/" + topic[len("persistent://"):] + "/schema"


def test_schema_admin_api_with_producers(standalone, client, topic):
    admin = standalone.admin_url
    path = schemas_path(topic)
    assert http(admin, "GET", path)[0] == 404
    # A producer registers version 0; the admin API shows it in Pulsar's GetSchemaResponse.
    first = client.create_producer(topic, schema=JsonSchema(Point))
    first.send(Point(name="a", x=1))
    status, body = http(admin, "GET", path)
    assert status == 200, body
    assert body["version"] == 0 and body["type"] == "JSON"
    assert json.loads(body["data"]) == json.loads(JsonSchema(Point).schema_info().schema())
    # An upload (pulsar-admin `schemas upload`) of version 2 of the record: checked like a
    # producer's, then a producer with that schema gets the uploaded version.
    v2 = JsonSchema(PointV2).schema_info().schema()
    status, body = http(admin, "POST", path, {"type": "JSON", "schema": v2, "properties": {}})
    assert (status, body) == (200, {"version": {"version": 1}})
    producer = client.create_producer(topic, schema=JsonSchema(PointV2))
    producer.send(PointV2(name="b", x=2, label="l"))
    assert "label" in client._client.get_schema_info(topic, -1).schema()
    status, body = http(admin, "POST", path, {"type": "STRING", "schema": ""})
    assert status == 409, body
    producer.close()
    first.close()

    # Deleting the topic deletes its schema: a producer of another type may then create it.
    status, body = http(admin, "DELETE", "/admin/v2/persistent/" + topic[len("persistent://"):])
    assert status == 204, body
    assert http(admin, "GET", path)[0] == 404
    client.create_producer(topic, schema=StringSchema()).send("now a string topic")
    status, body = http(admin, "GET", path)
    assert (status, body["version"], body["type"]) == (200, 0, "STRING")
