"""Redis online feature store: versioned feature sets, one key per passenger, an atomic "current" pointer.

Layout (every name comes from `key()`):

    <prefix>:fs:current                      -> version id of the current set (plain string)
    <prefix>:fs:versions                     -> sorted set of every version started, scored by start time
    <prefix>:fs:activated                    -> sorted set of every version ever made current, scored by then
    <prefix>:fs:v:<version>:meta             -> JSON {"version", "columns", "ids", "rows", "created_at"}
    <prefix>:fs:v:<version>:e:<passenger_id> -> JSON array of the feature values, in `columns` order

A build writes all entity keys, then its meta key (written last: a set without meta is
incomplete), then moves `current` with one SET, so a reader sees either the old set or the
new one, never half of one. The label is never written here. The switch and garbage collection
are Lua scripts, each atomic: `current` moves only to a set that still has its meta key, and GC
deletes a set's meta key (then its entities) only while it is not current, so `current` never
names a set being deleted.

Entity-keyed views beside the passenger set share these rules through their own prefix: the
group statistics of a build (`GROUPS_VIEW`, keyed by group id) are written under
`<prefix>:groups:fs:...` with the same version id as its passenger set.

Value encoding, chosen by measurement (`make bench`, 891 passengers): one MSET of JSON
arrays serialised by pandas in C is several times faster than pipelined HSETs of one hash per
passenger (the seed's layout), and reading the whole set back is one MGET whose values join
into a single JSON document parsed once.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from datetime import datetime, timezone

import pandas as pd
import redis

from pipeline.errors import FeatureSetNotFound
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

# Large sets are written in MSET chunks sent in one pipeline: one round trip, bounded command size.
CHUNK = 5000
# A build never made current and younger than this may still be on its way (a concurrent features run
# writing, or about to switch to it): GC leaves it, complete or not, whatever FEATURE_SETS_KEEP is.
INCOMPLETE_GRACE_SECONDS = 3600
GROUPS_VIEW = "groups"

# KEYS: the set's meta, current, activated; ARGV: version, now. Switch only to a complete set.
_ACTIVATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""
# KEYS: current, the set's meta; ARGV: version. Unmark a set as complete (no switch to it can succeed
# after this) unless it is current: checked in the same atomic step, so a concurrent switch wins or fails.
_RETIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
return 1
"""


def new_version(now: datetime | None = None) -> str:
    """A sortable, unique version id, e.g. 20261126T142501Z-3fa9c1."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def key(prefix: str, *parts: object) -> str:
    """The one place Redis key names are built: `<prefix>:fs:<part>:<part>...`."""
    return ":".join([prefix, "fs", *map(str, parts)])


class FeatureStore:
    """The online store of one deployment (its key prefix); the Redis client is created lazily."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None, view: str | None = None):
        # a view is another entity's sets: same switch and GC, under its own prefix
        self.prefix = f"{settings.feature_store_prefix}:{view}" if view else settings.feature_store_prefix
        self.keep = settings.feature_sets_keep
        self._url = settings.redis_url
        self._timeouts = (settings.redis_socket_timeout, settings.redis_socket_connect_timeout)
        self._client = client

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            # Short timeouts: the transformer reads on its event loop, where a hung Redis would stall all inference.
            self._client = redis.Redis.from_url(
                self._url, socket_timeout=self._timeouts[0], socket_connect_timeout=self._timeouts[1]
            )
        return self._client

    def _entity(self, version: str, entity_id: object) -> str:
        return key(self.prefix, "v", version, "e", entity_id)

    def _meta(self, version: str) -> str:
        return key(self.prefix, "v", version, "meta")

    # -- write ---------------------------------------------------------------------------

    def write(self, frame: pd.DataFrame, version: str | None = None, *, activate: bool = True) -> str:
        """Write `frame` (index = entity id, columns = features) as a new version; returns the version.

        With `activate` the "current" pointer moves to it once the set is complete, and
        versions beyond `feature_sets_keep` are garbage-collected.
        """
        version = version or new_version()
        if frame.index.has_duplicates:
            raise ValueError("feature frame has duplicate entity ids")
        ids = [i if isinstance(i, str) else int(i) for i in frame.index]  # passenger ids, or group ids
        # registered before any entity key, so garbage collection also finds a build that died midway;
        # scored by start time because ids made within the same second do not sort by creation
        self.client.zadd(key(self.prefix, "versions"), {version: time.time()}, nx=True)
        # NaN -> None -> JSON null (standard JSON); floats keep their exact repr
        rows = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            pipe.mset({self._entity(version, i): json.dumps(r, separators=(",", ":"))
                       for i, r in zip(chunk, rows[start:start + CHUNK])})
        meta = {"version": version, "columns": list(map(str, frame.columns)),
                "dtypes": {str(c): str(t) for c, t in frame.dtypes.items()}, "ids": ids, "rows": len(ids),
                "index_name": frame.index.name,
                "created_at": datetime.now(timezone.utc).isoformat()}
        pipe.set(self._meta(version), json.dumps(meta))  # last: its presence marks the set complete
        pipe.execute()
        if activate:
            self.activate(version)
        return version

    def activate(self, version: str) -> None:
        """Point "current" at a complete version (atomic for every reader and for GC), then GC."""
        switched = self.client.register_script(_ACTIVATE)(
            keys=[self._meta(version), key(self.prefix, "current"), key(self.prefix, "activated")],
            args=[version, time.time()])
        if not switched:
            raise FeatureSetNotFound(f"feature set {version!r} does not exist (or is incomplete)")
        logger.info("feature set %s is current", version)
        self.gc()

    def retire(self, version: str) -> bool:
        """Mark `version` incomplete unless it is current (atomically); False, and nothing done, if it is."""
        return bool(self.client.register_script(_RETIRE)(
            keys=[key(self.prefix, "current"), self._meta(version)], args=[version]))

    def gc(self) -> list[str]:
        """Delete versions older than current beyond the newest `feature_sets_keep` (current included).

        Builds newer than current, and those never made current that started less than
        `INCOMPLETE_GRACE_SECONDS` ago, are in progress and left alone. Entity keys are enumerated
        with SCAN, never KEYS, so a crashed build's keys are found too. Returns the deleted ones.
        """
        current = self.current()
        if current is None:
            return []
        started = {v.decode(): score for v, score in self.client.zrange(key(self.prefix, "versions"), 0, -1, withscores=True)}
        if current not in started:
            return []
        activated = {v.decode() for v in self.client.zrange(key(self.prefix, "activated"), 0, -1)}
        recent = time.time() - INCOMPLETE_GRACE_SECONDS
        older = [v for v, score in started.items() if score < started[current]]  # oldest first
        # a build never made current counts as crashed only once it is old enough: a live one would lose the
        # keys it is writing, or the switch it is about to make, and would never be collected afterwards
        settled = [v for v in older if v in activated or started[v] < recent]
        complete = [v for v in settled if self.client.exists(self._meta(v))]
        kept = set(complete[len(complete) - (self.keep - 1):]) if self.keep > 1 else set()
        doomed = [v for v in settled if v not in kept and self.retire(v)]  # retire: not if made current meanwhile
        for version in doomed:
            pattern = key(self.prefix, "v", version, "*")
            batch = []
            for k in self.client.scan_iter(match=pattern, count=1000):
                batch.append(k)
                if len(batch) >= 1000:
                    self.client.unlink(*batch)
                    batch = []
            if batch:
                self.client.unlink(*batch)
            self.client.zrem(key(self.prefix, "versions"), version)  # last: a GC that dies before it is redone
            self.client.zrem(key(self.prefix, "activated"), version)
        if doomed:
            logger.info("garbage-collected feature sets %s", doomed)
        return doomed

    # -- read ----------------------------------------------------------------------------

    def current(self) -> str | None:
        value = self.client.get(key(self.prefix, "current"))
        return value.decode() if value is not None else None

    def versions(self) -> list[str]:
        """Complete versions, oldest first (by start time)."""
        versions = [v.decode() for v in self.client.zrange(key(self.prefix, "versions"), 0, -1)]
        return [v for v in versions if self.client.exists(self._meta(v))]

    def metadata(self, version: str) -> dict:
        raw = self.client.get(self._meta(version))
        if raw is None:
            raise FeatureSetNotFound(f"feature set {version!r} does not exist in the online store "
                                     f"(prefix {self.prefix!r}); run the features step or pick one of {self.versions()}")
        return json.loads(raw)

    def read(self, version: str) -> pd.DataFrame:
        """The whole set: index = entity id (named "PassengerId"), columns as written."""
        meta = self.metadata(version)
        ids = meta["ids"]
        values = self.client.mget([self._entity(version, i) for i in ids]) if ids else []
        if any(v is None for v in values):  # deleted between the two reads (GC of an old version)
            raise FeatureSetNotFound(f"feature set {version!r} was garbage-collected while being read")
        rows = json.loads(b"[" + b",".join(values) + b"]")  # one parse for the whole set
        frame = pd.DataFrame(rows, columns=meta["columns"], index=pd.Index(ids, name=meta.get("index_name") or "PassengerId"))
        return frame.astype(meta["dtypes"])  # JSON null -> NaN in float columns

    def read_current(self, retries: int = 3) -> tuple[str, pd.DataFrame]:
        """(version, frame) of the current set; retried if a switch plus GC races the read."""
        for attempt in range(retries):
            version = self.current()
            if version is None:
                raise FeatureSetNotFound(f"no current feature set under prefix {self.prefix!r}; run the features step")
            try:
                return version, self.read(version)
            except FeatureSetNotFound:
                if attempt == retries - 1:
                    raise
        raise AssertionError("unreachable")

    def lookup(self, version: str, entity_id: object) -> dict | None:
        """One entity's features (one GET), or None if the entity is not in the set."""
        raw = self.client.get(self._entity(version, entity_id))
        if raw is None:
            return None
        return dict(zip(self.metadata_columns(version), json.loads(raw)))

    def lookup_records(self, version: str, entity_ids: list) -> dict[object, dict]:
        """{entity: {column: value}} of the given entities (one MGET once the columns are cached); entities not in
        the set are absent. Plain dicts: the transformer reads a request's few groups without a DataFrame."""
        columns = self.metadata_columns(version)
        ids = list(dict.fromkeys(entity_ids))
        # the set's own key rides along: a set garbage-collected since its columns were cached is an error, not
        # "none of these entities" (serving falls back to the offline copy on it)
        meta, *values = self.client.mget([self._meta(version), *(self._entity(version, i) for i in ids)])
        if meta is None:
            raise FeatureSetNotFound(f"feature set {version!r} is no longer in the online store (prefix {self.prefix!r})")
        found = [(i, v) for i, v in zip(ids, values) if v is not None]
        rows = json.loads(b"[" + b",".join(v for _, v in found) + b"]")
        return {i: dict(zip(columns, row)) for (i, _), row in zip(found, rows)}

    def lookup_many(self, version: str, entity_ids: list) -> pd.DataFrame:
        """`lookup_records` as rows of a frame indexed by entity."""
        records = self.lookup_records(version, entity_ids)
        return pd.DataFrame(list(records.values()), columns=self.metadata_columns(version),
                            index=pd.Index(list(records), dtype=object))

    def metadata_columns(self, version: str) -> list[str]:
        # column lists are immutable per version: cache them so a lookup stays one round trip
        cache = self.__dict__.setdefault("_columns", {})
        if version not in cache:
            cache[version] = self.metadata(version)["columns"]
        return cache[version]
