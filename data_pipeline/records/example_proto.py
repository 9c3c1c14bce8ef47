"""`tf.train.Example`'s protobuf messages, declared here from their published schema (tensorflow/core/example/
example.proto and feature.proto), in a descriptor pool of their own.

The shards' records are `tf.train.Example`s written by TFDS's serializer; reading them needs only these four
messages. Taking them from `tensorflow_datasets.proto` instead imports all of tensorflow_datasets in every Grain
worker, from several prefetch threads at once: its lazy imports (etils' `LazyModule`, a `functools.cached_property`,
whose lock is per class in Python 3.11) then deadlocked a worker in a test run, and the import costs ~0.5 s per
process besides. A private pool keeps these names ("tensorflow.Example", ...) from clashing with TFDS's own copy
when both are loaded in one process; the wire format is the same, so either parses the other's bytes.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto


def _message(file, name: str, *fields: tuple) -> descriptor_pb2.DescriptorProto:
    message = file.message_type.add(name=name)
    for number, field_name, field_type, label, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=field_type, label=label)
        if type_name:
            field.type_name = type_name
    return message


def _schema() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="data_pipeline_tf_example.proto", package="tensorflow", syntax="proto3"
    )
    repeated, optional = _FIELD.LABEL_REPEATED, _FIELD.LABEL_OPTIONAL
    _message(file, "BytesList", (1, "value", _FIELD.TYPE_BYTES, repeated, None))
    # proto3 packs repeated numbers by default (feature.proto also says [packed = true]); parsers accept both.
    _message(file, "FloatList", (1, "value", _FIELD.TYPE_FLOAT, repeated, None))
    _message(file, "Int64List", (1, "value", _FIELD.TYPE_INT64, repeated, None))
    feature = _message(
        file,
        "Feature",
        (1, "bytes_list", _FIELD.TYPE_MESSAGE, optional, ".tensorflow.BytesList"),
        (2, "float_list", _FIELD.TYPE_MESSAGE, optional, ".tensorflow.FloatList"),
        (3, "int64_list", _FIELD.TYPE_MESSAGE, optional, ".tensorflow.Int64List"),
    )
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = _message(
        file, "Features", (1, "feature", _FIELD.TYPE_MESSAGE, repeated, ".tensorflow.Features.FeatureEntry")
    )
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_FIELD.TYPE_STRING, label=optional)
    entry.field.add(name="value", number=2, type=_FIELD.TYPE_MESSAGE, label=optional, type_name=".tensorflow.Feature")
    _message(file, "Example", (1, "features", _FIELD.TYPE_MESSAGE, optional, ".tensorflow.Features"))
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_schema())
# Declared at import, as a generated *_pb2 module would be (a few descriptors, well under a millisecond): every
# thread that decodes finds the class ready, with no lazy step to race on.
Example = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("tensorflow.Example"))
