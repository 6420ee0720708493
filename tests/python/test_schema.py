"""Schemas with the official Python client: typed producers and consumers, versions per topic,
incompatible schemas refused with IncompatibleSchema, GET_SCHEMA."""

import _pulsar
import pulsar
import pytest
from pulsar.schema import AvroSchema, Integer, JsonSchema, Record, String, StringSchema

from conftest import receive_all

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


class PointV2(Record):
    _sorted_fields = True
    name = String()
    x = Integer()
    label = String(default="none")


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
