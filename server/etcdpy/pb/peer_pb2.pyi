from etcdpy.pb import raft_pb2 as _raft_pb2
from etcdpy.pb import rpc_pb2 as _rpc_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerHeader(_message.Message):
    __slots__ = ("from_id", "to_id", "cluster_id")
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    from_id: int
    to_id: int
    cluster_id: int
    def __init__(self, from_id: _Optional[int] = ..., to_id: _Optional[int] = ..., cluster_id: _Optional[int] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("header", "messages", "ping")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    header: PeerHeader
    messages: _containers.RepeatedCompositeFieldContainer[_raft_pb2.Message]
    ping: int
    def __init__(self, header: _Optional[_Union[PeerHeader, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[_raft_pb2.Message, _Mapping]]] = ..., ping: _Optional[int] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("accepted", "pong")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    pong: int
    def __init__(self, accepted: _Optional[bool] = ..., pong: _Optional[int] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("header", "message", "data", "last", "size")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    header: PeerHeader
    message: _raft_pb2.Message
    data: bytes
    last: bool
    size: int
    def __init__(self, header: _Optional[_Union[PeerHeader, _Mapping]] = ..., message: _Optional[_Union[_raft_pb2.Message, _Mapping]] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., size: _Optional[int] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MembersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MembersResponse(_message.Message):
    __slots__ = ("cluster_id", "members")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    members: _containers.RepeatedCompositeFieldContainer[_rpc_pb2.Member]
    def __init__(self, cluster_id: _Optional[int] = ..., members: _Optional[_Iterable[_Union[_rpc_pb2.Member, _Mapping]]] = ...) -> None: ...

class LeaseRenewRequest(_message.Message):
    __slots__ = ("header", "ID")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    header: PeerHeader
    ID: int
    def __init__(self, header: _Optional[_Union[PeerHeader, _Mapping]] = ..., ID: _Optional[int] = ...) -> None: ...

class LeaseRenewResponse(_message.Message):
    __slots__ = ("TTL", "error")
    TTL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TTL: int
    error: str
    def __init__(self, TTL: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class LeaseTimeToLiveRequest(_message.Message):
    __slots__ = ("header", "ID", "keys")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    header: PeerHeader
    ID: int
    keys: bool
    def __init__(self, header: _Optional[_Union[PeerHeader, _Mapping]] = ..., ID: _Optional[int] = ..., keys: _Optional[bool] = ...) -> None: ...

class LeaseTimeToLiveResponse(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: _rpc_pb2.LeaseTimeToLiveResponse
    error: str
    def __init__(self, response: _Optional[_Union[_rpc_pb2.LeaseTimeToLiveResponse, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class MemberPromoteRequest(_message.Message):
    __slots__ = ("header", "ID")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    header: PeerHeader
    ID: int
    def __init__(self, header: _Optional[_Union[PeerHeader, _Mapping]] = ..., ID: _Optional[int] = ...) -> None: ...

class MemberPromoteResponse(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: str
    def __init__(self, error: _Optional[str] = ...) -> None: ...
