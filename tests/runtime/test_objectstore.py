"""The object store on both backends: a local directory and a real S3 server (SeaweedFS, ``s3_bucket``).

Every behaviour the archive relies on is checked against the real thing: create-only writes (P3), retention
refused by the server itself, delete markers that leave versions readable, checksums that catch altered bytes,
and the start-up self-test.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.runtime import ConfigError
from services.runtime.objectstore import (
    InvalidObjectKey,
    InvalidObjectRequest,
    LocalObjectStore,
    ObjectCorrupt,
    ObjectExists,
    ObjectLocked,
    ObjectMissing,
    ObjectStore,
    ObjectStoreError,
    RetentionUnsupported,
    S3ObjectStore,
    open_object_store,
    validate_key,
)
from tests.objectstore import SeaweedS3

KEY = "archive/v1/carrier=acme/vehicle=AU-TRK-1001/date=2026-12-02/part-1-100.parquet"
BAD_KEYS = ["", "/abs/path", "a//b", "a/", "../escape", "a/../../b", "a/./b", ".", "..", ".hidden/x", "a/.meta",
            "a\\b", "a\x00b", "line\nbreak", "x" * 256, "/".join(["abcdefgh"] * 120)]


def _later(minutes: float = 10) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same tests on a local directory and on an S3 bucket with Object Lock (a real SeaweedFS server)."""
    if request.param == "local":
        return open_object_store(str(tmp_path / "objects"))
    return open_object_store(request.getfixturevalue("s3_bucket"))


@pytest.fixture
def s3_store(s3_bucket: str) -> S3ObjectStore:
    store = open_object_store(s3_bucket)
    assert isinstance(store, S3ObjectStore)
    return store


def test_round_trip(store: ObjectStore) -> None:
    data = b"PAR1" + os.urandom(3000) + b"PAR1"
    stored = store.put_new(KEY, data)
    assert (stored.key, stored.size, stored.retain_until) == (KEY, len(data), None)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.version_id  # S3: the VersionId; locally content-derived
    assert store.get(KEY) == data
    assert store.get(KEY, version_id=stored.version_id) == data
    assert store.head(KEY) == stored
    assert store.head("archive/v1/none") is None
    with pytest.raises(ObjectMissing):
        store.get("archive/v1/none")
    with pytest.raises(ObjectMissing):
        store.get(KEY, version_id="0123456789abcdef0123456789abcdef")


def test_list_is_sorted_by_prefix_and_bounded(store: ObjectStore) -> None:
    keys = ["b/2", "a/x/1", "a/x/2", "a/y", "a-z", "a/x10"]
    for key in keys:
        store.put_new(key, key.encode())
    assert store.list("") == sorted(keys)
    assert store.list("a/") == ["a/x/1", "a/x/2", "a/x10", "a/y"]
    assert store.list("a/x") == ["a/x/1", "a/x/2", "a/x10"]  # a plain string prefix, as on S3
    assert store.list("a/x/") == ["a/x/1", "a/x/2"]
    assert store.list("a/", limit=2) == ["a/x/1", "a/x/2"]
    assert store.list("c/") == []
    with pytest.raises(InvalidObjectRequest):
        store.list("a/", limit=0)
    with pytest.raises(InvalidObjectKey):
        store.list("../")


def test_a_second_create_is_refused_and_the_first_stays(store: ObjectStore) -> None:
    """P3: create-only, whatever the second write carries."""
    first = store.put_new(KEY, b"first")
    for data in (b"second", b"first"):
        with pytest.raises(ObjectExists) as refused:
            store.put_new(KEY, data)
        assert refused.value.reason == "OBJECT_EXISTS"
    assert store.get(KEY) == b"first"
    assert store.head(KEY) == first


def test_concurrent_creates_have_one_winner(store: ObjectStore) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def create(n: int) -> None:
        barrier.wait()
        try:
            store.put_new("race/key", f"writer {n}".encode())
            outcomes.append("won")
        except ObjectExists:
            outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 3 + ["won"]
    assert store.get("race/key").startswith(b"writer ")


def test_a_retained_object_refuses_deletion(store: ObjectStore) -> None:
    stored = store.put_new(KEY, b"evidence", retain_until=_later())
    assert stored.retain_until is not None and stored.retain_until > datetime.now(UTC)
    with pytest.raises(ObjectLocked) as by_version:
        store.delete(KEY, version_id=stored.version_id)
    assert by_version.value.reason == "OBJECT_LOCKED"
    with pytest.raises(ObjectLocked):
        store.delete(KEY)
    assert store.get(KEY) == b"evidence"
    assert store.head(KEY) == stored


def test_an_unretained_object_deletes(store: ObjectStore) -> None:
    store.put_new("tmp/a", b"a")
    store.delete("tmp/a")
    assert store.head("tmp/a") is None and store.list("tmp/") == []
    store.delete("tmp/a")  # deleting what is not there is not an error (as on S3)
    store.put_new("tmp/a", b"again")  # the key is free again
    assert store.get("tmp/a") == b"again"


def test_s3_retention_is_the_servers_refusal(s3_store: S3ObjectStore, s3_server: SeaweedS3) -> None:
    """Not just this API: the server itself refuses to delete a retained version or to shorten its retention."""
    assert s3_store.worm
    stored = s3_store.put_new(KEY, b"evidence", retain_until=_later())
    client = s3_server.client()
    version = client.head_object(Bucket=s3_store.bucket, Key=KEY, VersionId=stored.version_id)
    assert version["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=s3_store.bucket, Key=KEY, VersionId=stored.version_id)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        client.put_object_retention(Bucket=s3_store.bucket, Key=KEY, VersionId=stored.version_id,
                                    Retention={"Mode": "COMPLIANCE", "RetainUntilDate": _later(1)})
    assert s3_store.get(KEY, version_id=stored.version_id) == b"evidence"


def test_s3_a_version_less_delete_leaves_the_version_readable(s3_store: S3ObjectStore, s3_server: SeaweedS3) -> None:
    plain = s3_store.put_new("plain/x", b"plain")
    s3_store.delete("plain/x")  # a delete marker
    assert s3_store.head("plain/x") is None and s3_store.list("plain/") == []
    with pytest.raises(ObjectMissing):
        s3_store.get("plain/x")
    assert s3_store.get("plain/x", version_id=plain.version_id) == b"plain"
    # A retained object hidden by a delete marker made outside this API keeps its bytes too.
    retained = s3_store.put_new(KEY, b"evidence", retain_until=_later())
    marker = s3_server.client().delete_object(Bucket=s3_store.bucket, Key=KEY)
    assert marker["DeleteMarker"]
    assert s3_store.head(KEY) is None
    assert s3_store.get(KEY, version_id=retained.version_id) == b"evidence"
    with pytest.raises(ObjectLocked):
        s3_store.delete(KEY, version_id=retained.version_id)


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_are_refused(store: ObjectStore, key: str) -> None:
    for call in (lambda: store.put_new(key, b"x"), lambda: store.get(key), lambda: store.head(key),
                 lambda: store.delete(key)):
        with pytest.raises(InvalidObjectKey) as refused:
            call()
        assert refused.value.code_name == "INVALID_ARGUMENT"
        assert refused.value.violations[0].field == "key"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
       | st.lists(st.sampled_from(["a", "b", ".", "..", "", ".x", "c=d", "\\"]), max_size=6).map("/".join))
def test_a_valid_key_stays_inside_the_store(tmp_path: Path, key: str) -> None:
    """Whatever the text: refused with a reason, or a path under the store's root outside its own files."""
    root = tmp_path / "root"
    try:
        validate_key(key)
    except InvalidObjectKey as refused:
        assert refused.violations and refused.violations[0].description
        return
    resolved = Path(os.path.normpath(root / key))
    assert resolved.is_relative_to(root) and resolved != root
    assert not resolved.relative_to(root).parts[0].startswith(".")


def test_altered_bytes_are_detected_locally(tmp_path: Path) -> None:
    store = open_object_store(f"file://{tmp_path / 'objects'}")
    assert isinstance(store, LocalObjectStore) and not store.worm
    store.put_new(KEY, b"the original bytes")
    path = tmp_path / "objects" / KEY
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # written read-only
    path.chmod(0o644)
    path.write_bytes(b"the altered bytes!")
    with pytest.raises(ObjectCorrupt) as corrupt:
        store.get(KEY)
    assert corrupt.value.reason == "OBJECT_CORRUPT"


def test_a_crashed_local_write_leaves_nothing_that_blocks(tmp_path: Path) -> None:
    """A write that died after its sidecar but before its link left a sidecar and a temp file: neither makes the
    key look taken, and the temp file is swept when the store is next opened (once stale)."""
    store = open_object_store(str(tmp_path))
    internal = tmp_path / ".haulmesh-objectstore"
    stale_meta = internal / "meta" / f"{KEY}.json"
    stale_meta.parent.mkdir(parents=True)
    stale_meta.write_text(json.dumps({"size": 1, "sha256": "00", "version_id": "00",
                                      "retain_until": "2999-01-01T00:00:00+00:00"}))
    stale_temp = internal / "tmp" / "dead.tmp"
    stale_temp.write_bytes(b"half a parquet file")
    os.utime(stale_temp, (0, 0))
    assert store.head(KEY) is None and store.list("") == []
    stored = store.put_new(KEY, b"the real bytes")
    assert store.head(KEY) == stored and store.get(KEY) == b"the real bytes"
    open_object_store(str(tmp_path))
    assert not stale_temp.exists()


def test_a_local_key_under_an_object_is_a_clear_conflict(tmp_path: Path) -> None:
    """A directory cannot hold a file and a folder of one name: said plainly (S3 allows both)."""
    store = open_object_store(str(tmp_path))
    store.put_new("a/b", b"x")
    with pytest.raises(ObjectStoreError) as conflict:
        store.put_new("a/b/c", b"y")
    assert conflict.value.reason == "OBJECT_KEY_CONFLICT"


def test_altered_bytes_are_detected_on_s3(s3_store: S3ObjectStore, s3_server: SeaweedS3) -> None:
    """A version whose bytes disagree with its recorded sha256 (as a faulty store or a forged write would
    give) is refused on read."""
    stored = s3_store.put_new(KEY, b"the original bytes")
    s3_server.client().put_object(Bucket=s3_store.bucket, Key=KEY, Body=b"the altered bytes!",
                                  Metadata={"sha256": stored.sha256})
    with pytest.raises(ObjectCorrupt):
        s3_store.get(KEY)
    assert s3_store.get(KEY, version_id=stored.version_id) == b"the original bytes"


def test_the_self_test_passes(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    store.self_test()
    assert store.list("") == []  # leaves nothing behind: not even a delete marker or an old version on S3
    if isinstance(store, S3ObjectStore):
        versions = request.getfixturevalue("s3_server").client().list_object_versions(Bucket=store.bucket)
        assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []


_SEGMENT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="/\\"),
                   min_size=1, max_size=20).filter(lambda segment: not segment.startswith("."))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join), min_size=1, max_size=5, unique=True),
       data=st.binary(max_size=2048))
def test_any_valid_keys_round_trip_locally(tmp_path_factory: pytest.TempPathFactory, keys: list[str],
                                           data: bytes) -> None:
    """Whatever valid keys (Unicode, '=' and spaces included): each reads back its bytes and lists in order,
    unless one key is a folder of another, which a directory cannot hold and says so."""
    store = open_object_store(str(tmp_path_factory.mktemp("objects")))
    stored = []
    for key in keys:
        try:
            store.put_new(key, data + key.encode())
            stored.append(key)
        except ObjectStoreError as error:
            assert error.reason in ("OBJECT_KEY_CONFLICT", "OBJECT_EXISTS")
            assert any(other != key and (other.startswith(key + "/") or key.startswith(other + "/"))
                       for other in stored)
    assert store.list("") == sorted(stored)
    for key in stored:
        assert store.get(key) == data + key.encode()


class _OverwritingStore(LocalObjectStore):
    """A store whose create-only is broken (it replaces existing objects), as some S3 clones are."""

    def _put_new(self, key, data, retain_until):  # type: ignore[no-untyped-def]
        (self.root / key).unlink(missing_ok=True)
        return super()._put_new(key, data, retain_until)


def test_the_self_test_fails_closed_on_a_store_that_overwrites(tmp_path: Path) -> None:
    with pytest.raises(ObjectStoreError) as refused:
        _OverwritingStore(tmp_path).self_test()
    assert refused.value.reason == "CREATE_ONLY_NOT_ENFORCED"


@pytest.mark.parametrize("retain_until", [datetime(2030, 1, 1), datetime.now(UTC) - timedelta(seconds=1)],
                         ids=["naive", "past"])
def test_a_bad_retention_date_is_refused(store: ObjectStore, retain_until: datetime) -> None:
    with pytest.raises(InvalidObjectRequest) as refused:
        store.put_new(KEY, b"x", retain_until=retain_until)
    assert refused.value.reason == "INVALID_RETENTION"
    assert store.head(KEY) is None


def test_retention_on_a_bucket_without_object_lock_is_refused(s3_server: SeaweedS3, s3_bucket: str) -> None:
    bucket = s3_server.create_bucket(f"plain-{os.urandom(6).hex()}", object_lock=False)
    store = open_object_store(s3_server.url(bucket, "cold"))
    assert not store.worm
    with pytest.raises(RetentionUnsupported, match="no Object Lock"):
        store.put_new(KEY, b"x", retain_until=_later())
    store.put_new(KEY, b"x")  # create-only still holds without Object Lock
    with pytest.raises(ObjectExists):
        store.put_new(KEY, b"y")


def test_open_creates_a_missing_bucket_with_object_lock(s3_server: SeaweedS3, s3_bucket: str) -> None:
    name = f"fresh-{os.urandom(6).hex()}"
    with pytest.raises(ConfigError, match="does not exist"):
        open_object_store(s3_server.url(name), create=False)
    store = open_object_store(s3_server.url(name, "evidence/cold"))
    assert store.worm
    store.put_new("k", b"v")
    assert s3_server.client().head_object(Bucket=name, Key="evidence/cold/k")["ContentLength"] == 1
    assert store.list("") == ["k"]


@pytest.mark.parametrize("url, message", [
    ("ftp://host/dir", "unsupported scheme"),
    ("file://otherhost/dir", "file:///absolute"),
    ("s3://AKIA:TOPSECRET@bucket/p", "must not carry credentials"),
    ("s3://bucket/p?aws_secret_access_key=TOPSECRET", "unknown parameter"),
    ("s3://Bad_Bucket/p", "not a valid bucket name"),
    ("s3://bucket/p/../q", "bad key prefix"),
    ("s3://bucket/p?endpoint_url=localhost:9000", "endpoint_url must be"),
    ("  ", "empty"),
])
def test_a_malformed_url_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        open_object_store(url)
    assert "TOPSECRET" not in refused.value.message  # the error never repeats a secret


def test_missing_credentials_are_a_config_error(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="no AWS credentials"):
        open_object_store(s3_bucket)


def test_wrong_credentials_are_refused_clearly(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ObjectStoreError, match="denied") as refused:
        open_object_store(s3_bucket)
    assert refused.value.reason == "OBJECT_STORE_ACCESS_DENIED"
    assert "not-the-secret" not in refused.value.message


def test_a_missing_directory_without_create_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        open_object_store(str(tmp_path / "absent"), create=False)
    assert open_object_store(str(tmp_path / "made")).url == (tmp_path / "made").as_uri()


def test_the_seaweed_helper_stops_cleanly(tmp_path: Path) -> None:
    """The helper's own contract: it stops what it started and leaves no socket behind."""
    server = SeaweedS3(tmp_path).start()
    process = server.process
    assert process is not None
    server.stop()
    assert process.poll() is not None
    assert not any(Path(f"/tmp/seaweedfs-{role}-grpc-{server.ports[role + '_grpc']}.sock").exists()
                   for role in ("master", "volume", "filer", "s3"))
