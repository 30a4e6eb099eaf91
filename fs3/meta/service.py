"""The meta process: a framed-TCP shell over :class:`Namespace` (ops in :mod:`fs3.wire.ops`),
and the chunk garbage collector.

Meta keeps nothing of its own between requests: inodes, entries, inode ids and the garbage
queue live in the store, and the chain table comes from mgmtd. So several meta processes may
serve one PostgreSQL (or same-machine SQLite) database at once; they elect one garbage
collector through a lease row in that database, and any of them may answer any client.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import threading
import time
import uuid

from google.protobuf.message import DecodeError

from fs3 import capabilities
from fs3.capabilities import Issuer, ServiceSigner, service_keys
from fs3.config import Fs3Config
from fs3.db import redact
from fs3.errors import Fs3Error, InvalidArgument
from fs3.meta import users
from fs3.meta.backends import namespace_over, open_meta_store
from fs3.meta.namespace import Namespace
from fs3.meta.permissions import READ, WRITE, Caller, acting, current, require_admin
from fs3.meta.trash import Trash
from fs3.mgmtd.client import MgmtdClient
from fs3.proto import fs3_pb2 as pb
from fs3.proto.convert import entry_to_pb, inode_to_pb, trash_to_pb, user_from_pb, user_to_pb
from fs3.rpc import serve
from fs3.types import FILE, Inode, User, announceable, host_port
from fs3.wire.client import ConnectionPool
from fs3.wire.framing import RESPONSE, Reply, Request
from fs3.wire.ops import BY_OP, REMOVE
from fs3.wire.server import FrameServer

log = logging.getLogger("fs3.meta")


AUTH_CACHE_S = 2.0
"""How long meta trusts a token it resolved without asking the store again: a removed user
or a rotated token stops working on other meta servers within this time (at once on the
server that changed it), and requests skip a store transaction each."""

LIST_PAGE_ENTRIES = 10_000
"""Most entries one List reply holds, whatever its request asks: a listing of a huge
directory takes pages (a client from before pages gets the first one)."""
LIST_PAGE_BYTES = 4 << 20
"""Most bytes of entries one List reply holds (symlink targets may be 4 KiB each)."""

CALLER_LEN = struct.Struct("!H")
"""A meta payload is this length, the :class:`fs3_pb2.Caller` message, then the request."""


class MetaServicer:
    """One method per ``Meta`` rpc of fs3.proto: request message in, reply message out.
    Each runs as the request's caller (:func:`fs3.meta.permissions.acting`)."""

    def __init__(self, ns: Namespace, issuer: Issuer | None = None) -> None:
        self.ns = ns
        self.issuer = issuer
        """Signs the capability of each file opened (None: ``security.capabilities`` off)."""
        self.trash = Trash(ns)
        self._tokens: dict[str, tuple[User, float]] = {}  # token -> user, until (monotonic)

    def _user(self, token: str) -> User:
        now = time.monotonic()
        cached = self._tokens.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        user = users.authenticate(self.ns.store, token)
        if len(self._tokens) > 10_000:  # tokens are few; a flood of bad ones is not cached
            self._tokens.clear()
        self._tokens[token] = (user, now + AUTH_CACHE_S)
        return user

    def _caller(self, raw: memoryview) -> tuple[Caller, memoryview]:
        """The caller a payload names, and the request after it. Raises NotPermitted."""
        if len(raw) < CALLER_LEN.size:
            raise InvalidArgument("meta request without its caller")
        (size,) = CALLER_LEN.unpack_from(raw)
        try:
            who = pb.Caller.FromString(bytes(raw[CALLER_LEN.size : CALLER_LEN.size + size]))
        except DecodeError:
            raise InvalidArgument("meta request's caller is not a Caller message") from None
        caller = users.caller(self._user(who.token), who.act, who.uid, who.gid, who.groups)
        return caller, raw[CALLER_LEN.size + size :]

    def Stat(self, r: pb.PathRequest) -> pb.Inode:
        return inode_to_pb(self.ns.stat(r.path))

    def _granted(self, inode: Inode, ops: int) -> pb.Inode:
        """``inode`` as the reply of an open: a file comes with its capability, the
        permission a storage target asks for (checked here, by the method's namespace call)."""
        reply = inode_to_pb(inode)
        if self.issuer is not None and inode.kind == FILE:
            reply.capability = self.issuer.grant(inode.id, ops)
        return reply

    def Open(self, r: pb.PathRequest) -> pb.Inode:
        access = r.access or READ
        ops = (capabilities.READ if access & READ else 0) | (
            capabilities.WRITE if access & WRITE else 0
        )
        return self._granted(self.ns.open(r.path, access), ops)

    def Mkdir(self, r: pb.MkdirRequest) -> pb.Inode:
        return inode_to_pb(self.ns.mkdir(r.path, r.parents, r.mode or 0o755))

    def Create(self, r: pb.CreateRequest) -> pb.Inode:
        inode = self.ns.create(r.path, r.exclusive, r.chunk_size, r.stripe, r.mode or 0o644)
        return self._granted(inode, capabilities.ALL_OPS)

    def List(self, r: pb.ListRequest) -> pb.Listing:
        """One page of a directory, capped by :data:`LIST_PAGE_ENTRIES` and
        :data:`LIST_PAGE_BYTES` whatever limit the client asks for."""
        limit = min(r.limit or LIST_PAGE_ENTRIES, LIST_PAGE_ENTRIES)
        # One entry past the limit says whether more follow, without another round trip.
        found = self.ns.listdir(r.path, r.after, limit + 1)
        reply = pb.Listing(more=len(found) > limit)
        size = 0
        for entry in found[:limit]:
            message = entry_to_pb(entry)
            size += message.ByteSize()
            if size > LIST_PAGE_BYTES and reply.entries:
                reply.more = True
                break
            reply.entries.append(message)
        return reply

    def Rename(self, r: pb.RenameRequest) -> pb.Inode:
        return inode_to_pb(self.ns.rename(r.src, r.dst))

    def Unlink(self, r: pb.PathRequest) -> pb.Empty:
        self.ns.unlink(r.path)
        return pb.Empty()

    def Rmdir(self, r: pb.PathRequest) -> pb.Empty:
        self.ns.rmdir(r.path)
        return pb.Empty()

    def Truncate(self, r: pb.TruncateRequest) -> pb.Inode:
        return self._granted(self.ns.truncate(r.path, r.length), capabilities.WRITE)

    def SetLength(self, r: pb.SetLengthRequest) -> pb.Inode:
        return inode_to_pb(self.ns.set_length(r.inode_id, r.length))

    def Symlink(self, r: pb.SymlinkRequest) -> pb.Inode:
        return inode_to_pb(self.ns.symlink(r.path, r.target))

    def Link(self, r: pb.LinkRequest) -> pb.Inode:
        return inode_to_pb(self.ns.link(r.src, r.dst))

    def Mknod(self, r: pb.MknodRequest) -> pb.Inode:
        return inode_to_pb(self.ns.mknod(r.path, r.kind, r.mode or 0o644))

    def Readlink(self, r: pb.PathRequest) -> pb.LinkTarget:
        return pb.LinkTarget(target=self.ns.readlink(r.path))

    def SetAttr(self, r: pb.SetAttrRequest) -> pb.Inode:
        return inode_to_pb(
            self.ns.set_attr(
                r.path,
                r.mode if r.set_mode else None,
                r.atime if r.set_atime else None,
                r.mtime if r.set_mtime else None,
            )
        )

    def SetQuota(self, r: pb.SetQuotaRequest) -> pb.Inode:
        return inode_to_pb(
            self.ns.set_quota(
                r.path, r.max_bytes if r.set_bytes else None, r.max_inodes if r.set_inodes else None
            )
        )

    def GetLengthLimit(self, r: pb.InodeRequest) -> pb.LengthLimit:
        limit = self.ns.length_limit(r.inode_id)
        return pb.LengthLimit(limited=limit is not None, length=limit or 0)

    def Trash(self, r: pb.TrashRequest) -> pb.TrashEntry:
        return trash_to_pb(self.trash.move(r.path, r.expire_s))

    def ListTrash(self, r: pb.Empty) -> pb.TrashListing:
        return pb.TrashListing(entries=[trash_to_pb(e) for e in self.trash.list()])

    def RestoreTrash(self, r: pb.RestoreRequest) -> pb.Inode:
        return inode_to_pb(self.trash.restore(r.name, r.to or None))

    def Chown(self, r: pb.ChownRequest) -> pb.Inode:
        return inode_to_pb(self.ns.chown(r.path, r.uid, r.gid))

    def AddUser(self, r: pb.AddUserRequest) -> pb.UserToken:
        require_admin(current(), "adding a user")
        user = user_from_pb(r.user)
        return pb.UserToken(user=r.user, token=users.add_user(self.ns.store, user))

    def ListUsers(self, r: pb.Empty) -> pb.UserListing:
        require_admin(current(), "listing users")
        return pb.UserListing(users=[user_to_pb(u) for u in self.ns.store.run(lambda t: t.users())])

    def RemoveUser(self, r: pb.NameRequest) -> pb.Empty:
        require_admin(current(), "removing a user")
        users.remove(self.ns.store, r.name)
        self._tokens.clear()
        return pb.Empty()

    def RotateUser(self, r: pb.NameRequest) -> pb.UserToken:
        require_admin(current(), "rotating a token")
        token = users.rotate(self.ns.store, r.name)
        self._tokens.clear()
        user = self.ns.store.run(lambda t: t.user(r.name))
        return pb.UserToken(user=user_to_pb(user), token=token)

    def WhoAmI(self, r: pb.Empty) -> pb.UserInfo:
        c = current()
        return pb.UserInfo(uid=c.uid, gid=c.gid, groups=sorted(c.groups), admin=c.admin)

    def GetInodeStatus(self, r: pb.InodesRequest) -> pb.InodeStatus:
        found, pending = self.ns.inode_status(list(r.inode_ids))
        inodes = [inode_to_pb(i) for i in found.values()]
        return pb.InodeStatus(
            found=inodes, pending=list(pending), pending_from=list(pending.values())
        )

    def dispatch(self, req: Request, payload: memoryview) -> Reply:
        method = BY_OP.get(req.op)
        if method is None:
            raise Fs3Error(f"unknown meta op {req.op}")
        caller, payload = self._caller(payload)
        try:
            request = method.request.FromString(bytes(payload))
        except DecodeError:
            raise InvalidArgument(f"meta {method.name} request is not its message") from None
        with acting(caller):
            reply = getattr(self, method.name)(request)
        body = reply.SerializeToString()
        return RESPONSE.pack(0, len(body), 0, 0), body


def request_size(limit: int, req: Request) -> int:
    """A meta frame's payload size; above ``limit`` (``limits.meta_request_bytes``) the
    frame is refused before its payload is allocated and its connection closed."""
    if req.length > limit:
        raise InvalidArgument(
            f"meta request of {req.length} bytes exceeds limits.meta_request_bytes ({limit})"
        )
    return req.length


def collect_garbage(
    ns: Namespace, mgmtd: MgmtdClient, pool: ConnectionPool, signer: ServiceSigner | None = None
) -> int:
    """Deletes queued chunks from every live member of their chains; returns items done.

    An item stays queued while any live member cannot be reached. Offline members need no
    visit: resync removes chunks their predecessor no longer has. ``signer`` signs the
    deletions (a service's, as targets take deletes of any inode only from services).
    """
    table = mgmtd.table()
    done: list[int] = []
    for gid, item in ns.take_garbage():
        try:
            for chain_id in item.chains:
                chain = table.chains.get(chain_id)
                for member in chain.writers() if chain else ():
                    capability = signer.token() if signer is not None else b""
                    req = Request(
                        REMOVE, chain_id, 0, item.inode, item.from_index, capability=capability
                    )
                    pool.request(table.targets[member].data_address, req)
        except Fs3Error as err:
            log.info("garbage %d (inode %d) kept for later: %s", gid, item.inode, err)
            continue
        done.append(gid)
    if done:
        ns.drop_garbage(done)
    return len(done)


GC_LEASE = "garbage-collector"


def run_meta(
    db: str | os.PathLike[str],
    mgmtd_address: str,
    host: str,
    port: int,
    config: Fs3Config,
    stop: threading.Event,
    grpc_port: int = 0,
    admin_token: str = "",
) -> None:
    """Serves the namespace in ``db`` (a SQLite file or a ``postgresql://`` URL) until
    ``stop`` is set; ``mgmtd_address`` may list several mgmtd ``HOST:PORT``, comma-separated.

    ``admin_token`` (``hai fs3 meta`` takes ``FS3_ADMIN_TOKEN``, the Helm chart's Secret,
    docs/kubernetes.md) becomes the token of the admin :data:`fs3.meta.users.ADMIN` before
    meta serves, as ``hai fs3 up`` does for a local cluster.

    Meta requests travel as frames on ``port``; ``grpc_port`` (0: none) serves only
    ``grpc.health.v1``, SERVING once the frame server runs, for probes that speak gRPC.
    """
    t, security = config.timeouts, config.security
    announceable(host)  # registered with mgmtd as clients' way in: before anything starts
    store = open_meta_store(db, connections=config.meta.db_connections)
    try:
        keys = service_keys(security)
        if admin_token:
            users.bootstrap(store, admin_token, keep=True)
    except Fs3Error:
        store.close()
        raise
    issuer = signer = None
    if keys is not None:
        issuer = Issuer(keys, security.capability_s)
        signer = ServiceSigner(keys.service, security.capability_s)
    mgmtd = MgmtdClient(mgmtd_address, t.rpc_s, config.tls, service_keys=keys)
    ns = namespace_over(store, chains=lambda: list(mgmtd.table().chains))
    trash = Trash(ns)
    size = functools.partial(request_size, config.limits.meta_request_bytes)
    server = FrameServer((host, port), size, MetaServicer(ns, issuer).dispatch)
    threading.Thread(target=server.serve_forever, daemon=True, name="meta").start()
    health = None
    if grpc_port:
        health = serve(lambda _: None, host, grpc_port, services=["fs3.Meta"], tls=config.tls)
    pool = ConnectionPool(t.connect_s, t.rpc_s)
    address = host_port(host, port)
    me = f"{address}/{uuid.uuid4().hex[:8]}"  # a restarted server is a new lease holder
    log.info("meta serving on %s, namespace in %s", address, redact(os.fspath(db)))

    def collector() -> None:
        # Its own thread: a long collection must not delay the registrations that keep
        # this server in mgmtd's list.
        while not stop.wait(config.mgmtd.heartbeat_s):
            try:
                # One collector among the servers sharing the store: two would send every
                # chunk deletion twice. The lease outlives a few periods, then passes on.
                if ns.take_lease(GC_LEASE, me, config.mgmtd.lease_s):
                    trash.purge()  # expired trash: its files' chunks join the queue
                    collect_garbage(ns, mgmtd, pool, signer)
            except Fs3Error as err:
                log.warning("meta garbage collector: %s", err)

    gc = threading.Thread(target=collector, daemon=True, name="meta-gc")
    gc.start()
    try:
        while True:
            try:
                # Re-registering each period also refreshes the chain table new files use,
                # renews meta's lease in mgmtd's list and re-announces it to a new primary.
                mgmtd.register_meta(address)
            except Fs3Error as err:
                log.warning("meta: %s", err)
            if stop.wait(config.mgmtd.heartbeat_s):
                break
    finally:
        gc.join(timeout=config.timeouts.rpc_s)
        if health is not None:
            health.stop(grace=None)
        server.shutdown()
        server.server_close()
        pool.close()
        mgmtd.close()
        store.close()
