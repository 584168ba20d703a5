"""One contract for every storage backend, checked against real servers (moto, fake-gcs-server).

Also: error translation (unreachable -> TransientError, bad credentials / missing bucket ->
FatalError), an outage simulated with a paused TcpProxy, the retry helper, and StorageConfig.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from minio.error import S3Error

from common.errors import ConfigError, FatalError, TransientError
from embedded.servers import MotoS3Server, TcpProxy
from storage import InvalidKey, ObjectNotFound, ObjectStore, StorageConfig, open_store, with_retries
from storage.gcs import GcsStore
from storage.local import LocalStore
from storage.s3 import S3Store

ConfigFactory = Callable[..., StorageConfig]  # the s3_config / gcs_config fixtures (conftest.py)

PAYLOAD = bytes(range(256)) * 41 + b"\x00end"


# -- the contract, for every backend ---------------------------------------------------------------


def test_is_an_object_store(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


def test_put_get_round_trip(store: ObjectStore) -> None:
    key = "equipment_metrics/minute/20250524_1300_x.parquet"
    store.put(key, PAYLOAD)
    assert store.get(key) == PAYLOAD


def test_large_object_round_trip(store: ObjectStore) -> None:
    # 12 MiB: a multipart upload in the MinIO SDK, a resumable upload in google-cloud-storage.
    data = os.urandom(12 * 1024 * 1024)
    store.put("big/object.parquet", data)
    assert store.get("big/object.parquet") == data
    assert [(o.key, o.size) for o in store.list("big/")] == [("big/object.parquet", len(data))]


def test_empty_object_round_trip(store: ObjectStore) -> None:
    store.put("empty/object.bin", b"")
    assert store.get("empty/object.bin") == b""
    assert [(o.key, o.size) for o in store.list("empty/")] == [("empty/object.bin", 0)]


def test_overwrite_replaces(store: ObjectStore) -> None:
    store.put("a/b.parquet", b"first version, longer")
    store.put("a/b.parquet", b"second")
    assert store.get("a/b.parquet") == b"second"
    assert [(o.key, o.size) for o in store.list("a/")] == [("a/b.parquet", 6)]


def test_put_new_creates_once_and_never_replaces(store: ObjectStore) -> None:
    assert store.put_new("a/new.parquet", b"first writer") is True
    assert store.put_new("a/new.parquet", b"second writer") is False
    assert store.get("a/new.parquet") == b"first writer"
    assert [(o.key, o.size) for o in store.list("a/")] == [("a/new.parquet", 12)]


def test_put_new_large_object_is_conditional_too(store: ObjectStore) -> None:
    # 12 MiB: above the SDKs' multipart / resumable thresholds, where a condition could be lost.
    data = os.urandom(12 * 1024 * 1024)
    assert store.put_new("big/new.parquet", data) is True
    assert store.put_new("big/new.parquet", b"late zombie") is False
    assert store.get("big/new.parquet") == data


def test_put_new_after_delete_writes_again(store: ObjectStore) -> None:
    store.put_new("a/again.parquet", b"one")
    store.delete("a/again.parquet")
    assert store.put_new("a/again.parquet", b"two") is True
    assert store.get("a/again.parquet") == b"two"


def test_list_by_prefix_is_exact_recursive_and_sorted(store: ObjectStore) -> None:
    objects = {
        "equipment_metrics/minute/20250524_1300_a.parquet": b"a" * 10,
        "equipment_metrics/minute/20250524_1301_b.parquet": b"b" * 20,
        "equipment_metrics/minute/20250524_1400_c.parquet": b"c" * 5,
        "equipment_metrics/hour/20250524_13_a.parquet": b"h" * 30,
        "equipment_metrics_extra/x.parquet": b"x",
        "robot_status/minute/20250524_1300_a.parquet": b"r" * 7,
    }
    before = datetime.now(UTC) - timedelta(minutes=5)
    for key in reversed(list(objects)):
        store.put(key, objects[key])

    def listed(prefix: str) -> list[tuple[str, int]]:
        return [(info.key, info.size) for info in store.list(prefix)]

    def expected(prefix: str) -> list[tuple[str, int]]:
        return sorted((k, len(v)) for k, v in objects.items() if k.startswith(prefix))

    for prefix in (
        "",
        "equipment_metrics/",
        "equipment_metrics/minute/",
        "equipment_metrics/minute/20250524_130",
        "equipment_metrics",
        "robot_status/minute/20250524_1300_a.parquet",
    ):
        assert listed(prefix) == expected(prefix), prefix
    assert len(listed("equipment_metrics/")) == 4  # not equipment_metrics_extra/
    assert listed("nothing/") == []
    assert listed("equipment_metrics/minute/2026") == []

    after = datetime.now(UTC) + timedelta(minutes=5)
    for info in store.list(""):
        assert info.updated.tzinfo is not None and info.updated.utcoffset() == timedelta(0)
        assert before <= info.updated <= after


def test_delete_then_get_raises_object_not_found(store: ObjectStore) -> None:
    store.put("x/y.parquet", b"data")
    store.put("x/z.parquet", b"keep")
    store.delete("x/y.parquet")
    with pytest.raises(ObjectNotFound) as info:
        store.get("x/y.parquet")
    assert info.value.key == "x/y.parquet"
    assert not store.exists("x/y.parquet")
    assert [o.key for o in store.list("x/")] == ["x/z.parquet"]


def test_delete_missing_key_is_not_an_error(store: ObjectStore) -> None:
    store.delete("never/written.parquet")


def test_get_missing_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("never/written.parquet")


def test_exists(store: ObjectStore) -> None:
    assert not store.exists("e/one.parquet")
    store.put("e/one.parquet", b"1")
    assert store.exists("e/one.parquet")
    assert not store.exists("e/one")  # a prefix of a key is not an object
    assert not store.exists("e/one.parquet.bak")


def test_check_passes_on_live_store(store: ObjectStore) -> None:
    store.check()


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../x", "a/../b", "a/./b", "dir/", ".tmp-x", "a/.tmp-y"])
def test_malformed_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"never written")
    assert store.list("") == []


# -- local backend specifics --------------------------------------------------------------------------


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_local_put_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "fms-data")
    for i in range(5):
        store.put(f"d/{i}.parquet", PAYLOAD)
    store.put("d/0.parquet", b"overwritten")
    assert store.put_new("d/0.parquet", b"refused") is False
    store.check()
    assert _temp_files(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "fms-data" / "d").iterdir()) == [f"{i}.parquet" for i in range(5)]


def test_local_interrupted_write_is_invisible(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "fms-data")
    store.put("d/done.parquet", b"complete")
    # What a crash between open() and os.replace() leaves behind:
    (tmp_path / "fms-data" / "d" / ".tmp-half.parquet-0123abcd").write_bytes(b"PAR1 partial")
    (tmp_path / "fms-data" / ".tmp-top.parquet-4567").write_bytes(b"partial")
    assert [o.key for o in store.list("")] == ["d/done.parquet"]
    assert [o.key for o in store.list("d/")] == ["d/done.parquet"]
    assert not store.exists("d/half.parquet")
    with pytest.raises(ObjectNotFound):
        store.get("d/half.parquet")


def test_local_unusable_root_is_fatal(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_bytes(b"")
    store = LocalStore(not_a_dir, "fms-data")
    with pytest.raises(FatalError):
        store.check()
    with pytest.raises(FatalError):
        store.put("k.parquet", b"x")


# -- error translation against real servers ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["s3", "gcs"])
def test_check_unreachable_is_transient(request: pytest.FixtureRequest, backend: str) -> None:
    target, config = _server_and_config(request, backend)
    with TcpProxy("127.0.0.1", target) as proxy:
        store = open_store(config(_address(backend, proxy)), create_bucket=True)
        store.check()
        proxy.pause()
        with pytest.raises(TransientError):
            store.check()
        proxy.resume()
        store.check()


def test_s3_wrong_credentials_are_fatal() -> None:
    # moto accepts any key by default; its /moto-api/reset-auth switch makes it check keys
    # against its (empty) IAM, so every key is now unknown. A dedicated server: the switch is global.
    secret = "wrong-secret-VALUE-42"
    with MotoS3Server() as server:
        S3Store(server.endpoint, "testing", "testing", "auth-bucket", create_bucket=True).check()
        server.enforce_auth(True)
        store = open_store(
            StorageConfig(
                backend="minio",
                bucket="auth-bucket",
                minio_endpoint=server.endpoint,
                minio_access_key="AKIAWRONGKEY",
                minio_secret_key=secret,
            )
        )
        calls = (
            store.check,
            lambda: store.put("k.parquet", b"x"),
            lambda: store.put_new("k.parquet", b"x"),  # 403 is an error, never "already written"
            lambda: store.get("k.parquet"),
        )
        for call in calls:
            with pytest.raises(FatalError) as info:
                call()
            assert not isinstance(info.value, ObjectNotFound)
            cause = info.value.__cause__
            assert isinstance(cause, S3Error)
            assert cause.code in {"InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch"}
            assert secret not in str(info.value)
            assert "\n" not in str(info.value)


@pytest.mark.parametrize("backend", ["s3", "gcs"])
def test_missing_bucket_is_fatal_not_missing_object(request: pytest.FixtureRequest, backend: str) -> None:
    # fake-gcs-server has no authentication at all, so for GCS the fatal path is the missing bucket.
    _, config = _server_and_config(request, backend)
    store = open_store(config(None), create_bucket=False)
    for call in (store.check, lambda: store.put("k.parquet", b"x"), lambda: store.get("k.parquet")):
        with pytest.raises(FatalError) as info:
            call()
        assert "bucket" in str(info.value).lower()
    assert isinstance(store, S3Store | GcsStore)


@pytest.mark.parametrize("backend", ["s3", "gcs"])
def test_outage_put_is_transient_and_nothing_is_lost(request: pytest.FixtureRequest, backend: str) -> None:
    target, config = _server_and_config(request, backend)
    with TcpProxy("127.0.0.1", target) as proxy:
        store = open_store(config(_address(backend, proxy)), create_bucket=True)
        store.put("before/outage.parquet", PAYLOAD)
        proxy.pause()
        started = time.monotonic()
        with pytest.raises(TransientError):
            store.put("during/outage.parquet", b"second")
        # Fails fast: no retries inside the SDK, the caller's retry policy decides.
        assert time.monotonic() - started < 2.0
        with pytest.raises(TransientError):
            store.get("before/outage.parquet")
        proxy.resume()
        store.put("during/outage.parquet", b"second")
        assert [o.key for o in store.list("")] == ["before/outage.parquet", "during/outage.parquet"]
        assert store.get("before/outage.parquet") == PAYLOAD
        assert store.get("during/outage.parquet") == b"second"


def test_with_retries_rides_out_an_outage(s3_config: ConfigFactory, moto_server: MotoS3Server) -> None:
    with TcpProxy("127.0.0.1", moto_server.port) as proxy:
        store = open_store(s3_config(proxy.address), create_bucket=True)
        store.check()
        proxy.pause()
        events: list[tuple[int, float]] = []

        def on_retry(attempt: int, error: TransientError, delay: float) -> None:
            events.append((attempt, delay))
            if attempt == 2:
                proxy.resume()  # e.g. where the collector would pause Kafka consumption

        with_retries(
            lambda: store.put("k.parquet", PAYLOAD), attempts=5, initial_delay=0.01, max_delay=0.05, on_retry=on_retry
        )
        assert [attempt for attempt, _ in events] == [1, 2]
        assert all(0 < delay <= 0.05 for _, delay in events)
        assert store.get("k.parquet") == PAYLOAD


def test_gcs_store_honours_storage_emulator_host(monkeypatch: pytest.MonkeyPatch, gcs_config: ConfigFactory) -> None:
    emulator_host = gcs_config().gcs_emulator_host
    assert emulator_host is not None
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator_host)
    store = GcsStore("env-emulator-bucket", project="factory", create_bucket=True)
    store.check()
    store.put("k.parquet", b"via env")
    assert store.get("k.parquet") == b"via env"
    assert emulator_host in store.describe()


# -- retry helper ---------------------------------------------------------------------------------


def test_with_retries_gives_up_with_the_last_transient_error() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def always_down() -> None:
        calls.append(1)
        raise TransientError(f"down #{len(calls)}")

    with pytest.raises(TransientError, match="down #4"):
        with_retries(always_down, attempts=4, initial_delay=0.1, max_delay=0.25, sleep=sleeps.append)
    assert len(calls) == 4
    assert len(sleeps) == 3
    assert all(0.1 <= s <= 0.25 for s in sleeps)
    assert sleeps[-1] == 0.25  # capped


def test_with_retries_stops_before_a_sleep_would_pass_the_deadline() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def always_down() -> None:
        calls.append(1)
        raise TransientError("down")

    # Sleeps are 0.3-0.6, 0.6-0.9, then 1.2-1.5: the third would end past the 1 s deadline.
    with pytest.raises(TransientError):
        with_retries(always_down, deadline=1.0, initial_delay=0.3, sleep=sleeps.append)
    assert len(calls) == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("error", [FatalError("denied"), ObjectNotFound("k"), ValueError("bug")])
def test_with_retries_does_not_retry_other_errors(error: Exception) -> None:
    calls: list[int] = []

    def fail() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        with_retries(fail, attempts=5, sleep=lambda _: None)
    assert calls == [1]


def test_with_retries_needs_a_limit() -> None:
    with pytest.raises(ValueError):
        with_retries(lambda: None)
    assert with_retries(lambda: 7, deadline=float("inf")) == 7


# -- configuration ------------------------------------------------------------------------------------


def test_from_env_defaults_to_local() -> None:
    config = StorageConfig.from_env({})
    assert (config.backend, config.local_dir, config.bucket) == ("local", "./data", "fms-data")
    assert isinstance(open_store(config), LocalStore)


def test_from_env_minio() -> None:
    config = StorageConfig.from_env(
        {
            "STORAGE_BACKEND": "minio",
            "MINIO_ENDPOINT": "minio:9000",
            "MINIO_ACCESS_KEY": "collector",
            "MINIO_SECRET_KEY": "s3cr3t-VALUE",
            "MINIO_BUCKET": "plant-7",
            "MINIO_SECURE": "true",
        }
    )
    assert (config.backend, config.minio_endpoint, config.bucket, config.minio_secure) == (
        "minio",
        "minio:9000",
        "plant-7",
        True,
    )
    store = open_store(config)
    assert isinstance(store, S3Store)
    for text in (repr(config), str(config), store.describe()):
        assert "s3cr3t-VALUE" not in text
    assert "***" in repr(config)


def test_from_env_gcs() -> None:
    config = StorageConfig.from_env(
        {
            "STORAGE_BACKEND": "gcs",
            "GCS_BUCKET": "plant_7",
            "GCS_PROJECT": "factory",
            "STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443",
        }
    )
    assert (config.backend, config.bucket, config.gcs_project, config.gcs_emulator_host) == (
        "gcs",
        "plant_7",
        "factory",
        "http://127.0.0.1:4443",
    )
    assert isinstance(open_store(config), GcsStore)  # no network call yet


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"STORAGE_BACKEND": "minio", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "s3cr3t-VALUE"}, "MINIO_ENDPOINT"),
        ({"STORAGE_BACKEND": "nonsense"}, "STORAGE_BACKEND"),
        ({"STORAGE_BACKEND": "minio", "MINIO_ENDPOINT": "http://minio:9000"}, "MINIO_ENDPOINT"),
        ({"STORAGE_BACKEND": "minio", "MINIO_ENDPOINT": "minio:99999"}, "MINIO_ENDPOINT"),
        (
            {"STORAGE_BACKEND": "minio", "MINIO_ENDPOINT": "minio:9000", "MINIO_SECRET_KEY": "s3cr3t-VALUE"},
            "MINIO_ACCESS_KEY",
        ),
        ({"STORAGE_BACKEND": "minio", "MINIO_ENDPOINT": "minio:9000", "MINIO_ACCESS_KEY": "a"}, "MINIO_SECRET_KEY"),
        (
            {
                "STORAGE_BACKEND": "minio",
                "MINIO_ENDPOINT": "minio:9000",
                "MINIO_ACCESS_KEY": "a",
                "MINIO_SECRET_KEY": "s3cr3t-VALUE",
                "MINIO_SECURE": "maybe",
            },
            "MINIO_SECURE",
        ),
        ({"MINIO_BUCKET": "Bad_Bucket"}, "MINIO_BUCKET"),
        ({"STORAGE_BACKEND": "gcs", "GCS_BUCKET": "x"}, "GCS_BUCKET"),
        (
            {"STORAGE_BACKEND": "gcs", "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/key.json"},
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
    ],
)
def test_from_env_rejects_bad_values_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        StorageConfig.from_env(env)
    message = str(info.value)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message
    assert "s3cr3t-VALUE" not in message


def test_from_env_does_not_read_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environ, "STORAGE_BACKEND", "nonsense")
    assert StorageConfig.from_env({}).backend == "local"


# -- helpers ------------------------------------------------------------------------------------------


def _server_and_config(request: pytest.FixtureRequest, backend: str) -> tuple[int, ConfigFactory]:
    """Port of the session server for ``backend`` and its config factory."""
    server = request.getfixturevalue("moto_server" if backend == "s3" else "gcs_server")
    return server.port, request.getfixturevalue(f"{backend}_config")


def _address(backend: str, proxy: TcpProxy) -> str:
    """The proxy's address in the form the backend's settings expect."""
    return proxy.address if backend == "s3" else f"http://{proxy.address}"


def test_put_file_and_get_file_stream_through_local_files(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    payload = os.urandom(3 * 1024 * 1024 + 7)
    source.write_bytes(payload)
    store.put_file("equipment_metrics/hour/20250612_00_01.parquet", str(source))
    target = tmp_path / "out.bin"
    store.get_file("equipment_metrics/hour/20250612_00_01.parquet", str(target))
    assert target.read_bytes() == payload
    assert [o.size for o in store.list("equipment_metrics/hour/")] == [len(payload)]
    with pytest.raises(ObjectNotFound):
        store.get_file("equipment_metrics/hour/missing.parquet", str(tmp_path / "none.bin"))
