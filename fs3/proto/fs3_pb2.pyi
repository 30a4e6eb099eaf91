from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Target(_message.Message):
    __slots__ = ("target_id", "host", "data_port", "grpc_port", "alive")
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    DATA_PORT_FIELD_NUMBER: _ClassVar[int]
    GRPC_PORT_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    target_id: int
    host: str
    data_port: int
    grpc_port: int
    alive: bool
    def __init__(self, target_id: _Optional[int] = ..., host: _Optional[str] = ..., data_port: _Optional[int] = ..., grpc_port: _Optional[int] = ..., alive: _Optional[bool] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("target_id", "state")
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    target_id: int
    state: str
    def __init__(self, target_id: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class Chain(_message.Message):
    __slots__ = ("chain_id", "members")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    chain_id: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, chain_id: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class RoutingTable(_message.Message):
    __slots__ = ("version", "targets", "chains", "meta_address")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    META_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    version: int
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    chains: _containers.RepeatedCompositeFieldContainer[Chain]
    meta_address: str
    def __init__(self, version: _Optional[int] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., chains: _Optional[_Iterable[_Union[Chain, _Mapping]]] = ..., meta_address: _Optional[str] = ...) -> None: ...

class ResyncProgress(_message.Message):
    __slots__ = ("chain_id", "target_id", "done", "total")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    chain_id: int
    target_id: int
    done: int
    total: int
    def __init__(self, chain_id: _Optional[int] = ..., target_id: _Optional[int] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class TargetStats(_message.Message):
    __slots__ = ("target_id", "total_bytes", "free_bytes", "used_bytes", "chunks", "fsid", "resyncs")
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FSID_FIELD_NUMBER: _ClassVar[int]
    RESYNCS_FIELD_NUMBER: _ClassVar[int]
    target_id: int
    total_bytes: int
    free_bytes: int
    used_bytes: int
    chunks: int
    fsid: str
    resyncs: _containers.RepeatedCompositeFieldContainer[ResyncProgress]
    def __init__(self, target_id: _Optional[int] = ..., total_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., chunks: _Optional[int] = ..., fsid: _Optional[str] = ..., resyncs: _Optional[_Iterable[_Union[ResyncProgress, _Mapping]]] = ...) -> None: ...

class ClusterStats(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[TargetStats]
    def __init__(self, targets: _Optional[_Iterable[_Union[TargetStats, _Mapping]]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("target", "stats", "fresh", "boot")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    BOOT_FIELD_NUMBER: _ClassVar[int]
    target: Target
    stats: TargetStats
    fresh: bool
    boot: str
    def __init__(self, target: _Optional[_Union[Target, _Mapping]] = ..., stats: _Optional[_Union[TargetStats, _Mapping]] = ..., fresh: _Optional[bool] = ..., boot: _Optional[str] = ...) -> None: ...

class SyncDoneRequest(_message.Message):
    __slots__ = ("chain_id", "target_id")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    chain_id: int
    target_id: int
    def __init__(self, chain_id: _Optional[int] = ..., target_id: _Optional[int] = ...) -> None: ...

class RegisterMetaRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class Layout(_message.Message):
    __slots__ = ("chunk_size", "chains", "seed")
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    chunk_size: int
    chains: _containers.RepeatedScalarFieldContainer[int]
    seed: int
    def __init__(self, chunk_size: _Optional[int] = ..., chains: _Optional[_Iterable[int]] = ..., seed: _Optional[int] = ...) -> None: ...

class Quota(_message.Message):
    __slots__ = ("max_bytes", "max_inodes", "used_bytes", "used_inodes")
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_INODES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_INODES_FIELD_NUMBER: _ClassVar[int]
    max_bytes: int
    max_inodes: int
    used_bytes: int
    used_inodes: int
    def __init__(self, max_bytes: _Optional[int] = ..., max_inodes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., used_inodes: _Optional[int] = ...) -> None: ...

class Inode(_message.Message):
    __slots__ = ("id", "kind", "mode", "length", "mtime", "ctime", "parent", "layout", "target", "atime", "quota", "uid", "gid", "nlink", "capability")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    CTIME_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ATIME_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    NLINK_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    id: int
    kind: str
    mode: int
    length: int
    mtime: float
    ctime: float
    parent: int
    layout: Layout
    target: str
    atime: float
    quota: Quota
    uid: int
    gid: int
    nlink: int
    capability: bytes
    def __init__(self, id: _Optional[int] = ..., kind: _Optional[str] = ..., mode: _Optional[int] = ..., length: _Optional[int] = ..., mtime: _Optional[float] = ..., ctime: _Optional[float] = ..., parent: _Optional[int] = ..., layout: _Optional[_Union[Layout, _Mapping]] = ..., target: _Optional[str] = ..., atime: _Optional[float] = ..., quota: _Optional[_Union[Quota, _Mapping]] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., nlink: _Optional[int] = ..., capability: _Optional[bytes] = ...) -> None: ...

class DirEntry(_message.Message):
    __slots__ = ("name", "inode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    inode: Inode
    def __init__(self, name: _Optional[str] = ..., inode: _Optional[_Union[Inode, _Mapping]] = ...) -> None: ...

class PathRequest(_message.Message):
    __slots__ = ("path", "access")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    path: str
    access: int
    def __init__(self, path: _Optional[str] = ..., access: _Optional[int] = ...) -> None: ...

class MkdirRequest(_message.Message):
    __slots__ = ("path", "parents", "mode")
    PATH_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    parents: bool
    mode: int
    def __init__(self, path: _Optional[str] = ..., parents: _Optional[bool] = ..., mode: _Optional[int] = ...) -> None: ...

class CreateRequest(_message.Message):
    __slots__ = ("path", "exclusive", "chunk_size", "stripe", "mode")
    PATH_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    exclusive: bool
    chunk_size: int
    stripe: int
    mode: int
    def __init__(self, path: _Optional[str] = ..., exclusive: _Optional[bool] = ..., chunk_size: _Optional[int] = ..., stripe: _Optional[int] = ..., mode: _Optional[int] = ...) -> None: ...

class RenameRequest(_message.Message):
    __slots__ = ("src", "dst")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ...) -> None: ...

class TruncateRequest(_message.Message):
    __slots__ = ("path", "length")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    path: str
    length: int
    def __init__(self, path: _Optional[str] = ..., length: _Optional[int] = ...) -> None: ...

class SetLengthRequest(_message.Message):
    __slots__ = ("inode_id", "length")
    INODE_ID_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    inode_id: int
    length: int
    def __init__(self, inode_id: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class SymlinkRequest(_message.Message):
    __slots__ = ("path", "target")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    path: str
    target: str
    def __init__(self, path: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class SetAttrRequest(_message.Message):
    __slots__ = ("path", "set_mode", "mode", "set_atime", "atime", "set_mtime", "mtime")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SET_MODE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SET_ATIME_FIELD_NUMBER: _ClassVar[int]
    ATIME_FIELD_NUMBER: _ClassVar[int]
    SET_MTIME_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    path: str
    set_mode: bool
    mode: int
    set_atime: bool
    atime: float
    set_mtime: bool
    mtime: float
    def __init__(self, path: _Optional[str] = ..., set_mode: _Optional[bool] = ..., mode: _Optional[int] = ..., set_atime: _Optional[bool] = ..., atime: _Optional[float] = ..., set_mtime: _Optional[bool] = ..., mtime: _Optional[float] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("path", "set_bytes", "max_bytes", "set_inodes", "max_inodes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    SET_INODES_FIELD_NUMBER: _ClassVar[int]
    MAX_INODES_FIELD_NUMBER: _ClassVar[int]
    path: str
    set_bytes: bool
    max_bytes: int
    set_inodes: bool
    max_inodes: int
    def __init__(self, path: _Optional[str] = ..., set_bytes: _Optional[bool] = ..., max_bytes: _Optional[int] = ..., set_inodes: _Optional[bool] = ..., max_inodes: _Optional[int] = ...) -> None: ...

class InodeRequest(_message.Message):
    __slots__ = ("inode_id",)
    INODE_ID_FIELD_NUMBER: _ClassVar[int]
    inode_id: int
    def __init__(self, inode_id: _Optional[int] = ...) -> None: ...

class LengthLimit(_message.Message):
    __slots__ = ("limited", "length")
    LIMITED_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    limited: bool
    length: int
    def __init__(self, limited: _Optional[bool] = ..., length: _Optional[int] = ...) -> None: ...

class TrashRequest(_message.Message):
    __slots__ = ("path", "expire_s")
    PATH_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_S_FIELD_NUMBER: _ClassVar[int]
    path: str
    expire_s: float
    def __init__(self, path: _Optional[str] = ..., expire_s: _Optional[float] = ...) -> None: ...

class TrashEntry(_message.Message):
    __slots__ = ("name", "path", "deleted", "expires", "inode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    deleted: float
    expires: float
    inode: Inode
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., deleted: _Optional[float] = ..., expires: _Optional[float] = ..., inode: _Optional[_Union[Inode, _Mapping]] = ...) -> None: ...

class TrashListing(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[TrashEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[TrashEntry, _Mapping]]] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("name", "to")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    name: str
    to: str
    def __init__(self, name: _Optional[str] = ..., to: _Optional[str] = ...) -> None: ...

class InodesRequest(_message.Message):
    __slots__ = ("inode_ids",)
    INODE_IDS_FIELD_NUMBER: _ClassVar[int]
    inode_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, inode_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class InodeStatus(_message.Message):
    __slots__ = ("found", "pending", "pending_from")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    PENDING_FROM_FIELD_NUMBER: _ClassVar[int]
    found: _containers.RepeatedCompositeFieldContainer[Inode]
    pending: _containers.RepeatedScalarFieldContainer[int]
    pending_from: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, found: _Optional[_Iterable[_Union[Inode, _Mapping]]] = ..., pending: _Optional[_Iterable[int]] = ..., pending_from: _Optional[_Iterable[int]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("path", "after", "limit")
    PATH_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    path: str
    after: str
    limit: int
    def __init__(self, path: _Optional[str] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class Listing(_message.Message):
    __slots__ = ("entries", "more")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[DirEntry]
    more: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[DirEntry, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class Caller(_message.Message):
    __slots__ = ("token", "act", "uid", "gid", "groups")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACT_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    token: str
    act: bool
    uid: int
    gid: int
    groups: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token: _Optional[str] = ..., act: _Optional[bool] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., groups: _Optional[_Iterable[int]] = ...) -> None: ...

class ChownRequest(_message.Message):
    __slots__ = ("path", "uid", "gid")
    PATH_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    path: str
    uid: int
    gid: int
    def __init__(self, path: _Optional[str] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ...) -> None: ...

class UserInfo(_message.Message):
    __slots__ = ("name", "uid", "gid", "groups", "admin", "mount")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    MOUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    uid: int
    gid: int
    groups: _containers.RepeatedScalarFieldContainer[int]
    admin: bool
    mount: bool
    def __init__(self, name: _Optional[str] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., groups: _Optional[_Iterable[int]] = ..., admin: _Optional[bool] = ..., mount: _Optional[bool] = ...) -> None: ...

class AddUserRequest(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: UserInfo
    def __init__(self, user: _Optional[_Union[UserInfo, _Mapping]] = ...) -> None: ...

class NameRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UserToken(_message.Message):
    __slots__ = ("user", "token")
    USER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    user: UserInfo
    token: str
    def __init__(self, user: _Optional[_Union[UserInfo, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class UserListing(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[UserInfo]
    def __init__(self, users: _Optional[_Iterable[_Union[UserInfo, _Mapping]]] = ...) -> None: ...

class LinkTarget(_message.Message):
    __slots__ = ("target",)
    TARGET_FIELD_NUMBER: _ClassVar[int]
    target: str
    def __init__(self, target: _Optional[str] = ...) -> None: ...

class LinkRequest(_message.Message):
    __slots__ = ("src", "dst")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ...) -> None: ...

class MknodRequest(_message.Message):
    __slots__ = ("path", "kind", "mode")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: str
    mode: int
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[str] = ..., mode: _Optional[int] = ...) -> None: ...

class ChunkRequest(_message.Message):
    __slots__ = ("chain_id", "inode", "index", "offset", "length", "table_version", "data", "truncate", "crc", "capability")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    CRC_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    chain_id: int
    inode: int
    index: int
    offset: int
    length: int
    table_version: int
    data: bytes
    truncate: bool
    crc: int
    capability: bytes
    def __init__(self, chain_id: _Optional[int] = ..., inode: _Optional[int] = ..., index: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., table_version: _Optional[int] = ..., data: _Optional[bytes] = ..., truncate: _Optional[bool] = ..., crc: _Optional[int] = ..., capability: _Optional[bytes] = ...) -> None: ...

class ChunkReply(_message.Message):
    __slots__ = ("data", "crc", "version")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    crc: int
    version: int
    def __init__(self, data: _Optional[bytes] = ..., crc: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...
