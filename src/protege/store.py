"""Artifact store: files and directory trees on S3-compatible storage (MinIO, AWS S3, s3rver).

This module and `protege.tracking` are the only ones that talk to remote storage; phases hand it
local paths and get back `s3://` URIs (I/O at the edges).

Contracts:
- `upload_dir` writes every object first and `MANIFEST.json` (relative path, size and sha256 of
  every object) **last**, so a prefix without a manifest is an incomplete upload and `download_dir`
  refuses it. A re-upload deletes the old manifest before writing anything.
- `download_dir` verifies every object against the manifest and raises a `StoreError` naming each
  object that is missing, has the wrong size or the wrong sha256; nothing unverified is left behind.
- Single files carry their sha256 in the object's metadata and are verified the same way.
- Every failure is a `StoreError` naming the endpoint, bucket and object: a missing bucket, bad
  credentials, an unreachable endpoint (bounded by connect timeout and retries, never minutes).
- Faults: each put, get, stat and listing is retried (`store.op_attempts`, exponential backoff capped at
  `store.op_backoff_max_s`) while the endpoint is unreachable or answers 5xx; past that it raises
  `StoreUnavailable` (a `StoreError`), which callers may queue and retry later (`UploadQueue`).
- `write_manifest` / `verify_tree` put the same kind of manifest beside a local directory (checkpoints),
  so a local copy is verified before it is trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from protege.config import StoreConfig

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = "protege.manifest/v1"
SHA256_META = "sha256"
_CHUNK = 1 << 20  # read/hash in 1 MiB pieces: bounded memory for any object size
_MIB = 1 << 20
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
}


class StoreError(RuntimeError):
    """An artifact-store operation failed; the message names the endpoint, bucket and object."""


class IncompleteUploadError(StoreError):
    """A prefix holds no complete directory upload (no MANIFEST.json): nothing there, or a cut-off upload."""


class StoreUnavailable(StoreError):
    """The endpoint was unreachable, or kept answering 5xx, through every attempt: the same call may
    succeed later (queue it), unlike a missing bucket, bad credentials or a corrupted object."""


# S3 error codes of a server that is overloaded or failing, not of a bad request.
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "ServerError"}


# --------------------------------------------------------------------------------------------------
# s3:// URIs and the manifest
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Uri:
    """`s3://bucket/key`; `key` has no leading slash and may be empty (the bucket root)."""

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            raise StoreError(f"{uri!r}: not an s3:// URI")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise StoreError(f"{uri!r}: no bucket name")
        return cls(bucket, key.strip("/"))

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    @property
    def prefix(self) -> str:
        """The key as a directory prefix (`a/b/`; empty at the bucket root)."""
        return f"{self.key.rstrip('/')}/" if self.key else ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    """Path relative to the uploaded directory, POSIX separators."""
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a complete directory upload holds."""

    files: list[ManifestEntry]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        files = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files]
        return json.dumps(
            {"format": MANIFEST_FORMAT, "total_bytes": self.total_bytes, "files": files}, indent=1
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            files = [ManifestEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise StoreError(f"{where}: unreadable manifest: {err}") from err
        for entry in files:
            _check_relative(entry.path, where)
        return cls(files)


def _check_relative(path: str, where: str) -> None:
    # A manifest comes from the bucket: never let it write outside the target directory.
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or ".." in parts:
        raise StoreError(f"{where}: manifest path {path!r} is not a relative path inside the directory")


def sha256_text(text: str) -> str:
    """sha256 of a string's UTF-8 bytes (digests of JSON records, config hashes)."""
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(local_dir: Path, name: str) -> Manifest:
    """Write `<local_dir>/<name>`: size and sha256 of every other file under `local_dir` (written last, so
    a directory without it was never completed)."""
    root = Path(local_dir)
    entries = [
        ManifestEntry(rel, (root / rel).stat().st_size, sha256_file(root / rel))
        for rel in _tree_files(root)
        if rel != name
    ]
    manifest = Manifest(entries)
    part = root / f"{name}.part"
    part.write_text(manifest.to_json())
    part.replace(root / name)
    return manifest


def verify_tree(local_dir: Path, name: str) -> str | None:
    """None when `<local_dir>/<name>` (see `write_manifest`) is readable and every file it lists has its
    size and sha256; else a one-line reason naming the first bad file (files it does not list are ignored)."""
    root = Path(local_dir)
    try:
        manifest = Manifest.from_json((root / name).read_text(), str(root / name))
    except FileNotFoundError:
        return f"{root / name} is missing (the checkpoint was never completed)"
    except (StoreError, OSError, UnicodeDecodeError) as err:
        return str(err).splitlines()[0]
    for entry in manifest.files:
        path = root / entry.path
        if not path.is_file():
            return f"{path}: missing (listed in {name})"
        if path.stat().st_size != entry.size:
            return f"{path}: size {path.stat().st_size} bytes, {name} says {entry.size}"
        if sha256_file(path) != entry.sha256:
            return f"{path}: sha256 differs from {name} (corrupted)"
    return None


# --------------------------------------------------------------------------------------------------
# The seam
# --------------------------------------------------------------------------------------------------


class ArtifactStore(Protocol):
    """Where datasets, trajectories, checkpoints and reports live between phases."""

    def ensure_bucket(self, bucket: str | None = None) -> None:
        """Create the bucket (default: the configured one) if it does not exist."""

    def upload_file(self, path: Path, uri: str) -> str:
        """Upload one file to exactly `uri`; returns the URI."""

    def download_file(self, uri: str, path: Path) -> Path:
        """Download one object to `path`, verified against its sha256 when it carries one."""

    def upload_dir(self, local_dir: Path, uri: str) -> Manifest:
        """Upload a directory tree under the prefix `uri`, manifest last."""

    def download_dir(self, uri: str, local_dir: Path) -> Manifest:
        """Download a complete (manifested) tree into `local_dir`, verifying every object."""

    def fetch(self, uri: str, dest_dir: Path) -> Path:
        """Download a tree (if `uri` holds a manifest) or one object into `dest_dir`; returns its path."""

    def list(self, uri: str) -> list[str]:
        """Every object URI under the prefix `uri`, sorted."""

    def exists(self, uri: str) -> bool:
        """Whether `uri` is an object or a complete (manifested) tree."""


# --------------------------------------------------------------------------------------------------
# S3 implementation (minio client)
# --------------------------------------------------------------------------------------------------


class S3ArtifactStore:
    """`ArtifactStore` on any S3-compatible endpoint through the `minio` client (path-style)."""

    def __init__(self, client: Any, cfg: StoreConfig, progress: Callable[[str], None] = log.info) -> None:
        self._client = client
        self._cfg = cfg
        self._progress = progress

    @classmethod
    def from_config(cls, cfg: StoreConfig, progress: Callable[[str], None] = log.info) -> S3ArtifactStore:
        return cls(make_client(cfg), cfg, progress)

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self._cfg.secure else 'http'}://{self._cfg.endpoint}"

    def uri(self, key: str = "") -> str:
        """`s3://<configured bucket>/<key>`."""
        return str(S3Uri(self._cfg.bucket, key.lstrip("/")))

    # ---- buckets and listing ----------------------------------------------------------------------

    def ensure_bucket(self, bucket: str | None = None) -> None:
        name = bucket or self._cfg.bucket

        def ensure() -> None:
            with self._errors(f"s3://{name}"):
                if not self._client.bucket_exists(name):
                    self._client.make_bucket(name)
                    log.info("created bucket s3://%s on %s", name, self.endpoint_url)

        self._retry(ensure)

    def list(self, uri: str) -> list[str]:
        loc = S3Uri.parse(uri)

        def listing() -> list[str]:
            with self._errors(str(loc)):
                objects = self._client.list_objects(loc.bucket, prefix=loc.prefix or None, recursive=True)
                return sorted(str(S3Uri(loc.bucket, o.object_name)) for o in objects)

        return self._retry(listing)

    def exists(self, uri: str) -> bool:
        loc = S3Uri.parse(uri)
        return self._stat(loc) is not None or self._stat(loc.join(MANIFEST_NAME)) is not None

    # ---- single files -----------------------------------------------------------------------------

    def upload_file(self, path: Path, uri: str) -> str:
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path}: not a file")
        loc = S3Uri.parse(uri)
        if not loc.key:
            raise StoreError(f"{uri}: needs an object key, not just a bucket")
        self._put(path, loc, sha256_file(path))
        return str(loc)

    def download_file(self, uri: str, path: Path) -> Path:
        loc = S3Uri.parse(uri)
        stat = self._stat(loc)
        if stat is None:
            raise StoreError(f"{self.endpoint_url}: object {loc} does not exist")
        expected = _meta_sha256(stat.metadata)
        self._retry(lambda: self._get_verified(loc, Path(path), stat.size, expected))
        return Path(path)

    # ---- directory trees --------------------------------------------------------------------------

    def upload_dir(self, local_dir: Path, uri: str) -> Manifest:
        root = Path(local_dir)
        if not root.is_dir():
            raise StoreError(f"{root}: not a directory")
        loc = S3Uri.parse(uri)
        files = _tree_files(root)
        # The old manifest goes first: an interrupted re-upload must not look complete.
        manifest_loc = loc.join(MANIFEST_NAME)

        def remove_manifest() -> None:
            with self._errors(str(manifest_loc)):
                self._client.remove_object(manifest_loc.bucket, manifest_loc.key)

        self._retry(remove_manifest)
        meter = _Progress(f"upload {root} -> {loc}", len(files), self._cfg, self._progress)
        entries = []
        for rel in files:
            path = root / rel
            digest = sha256_file(path)
            self._put(path, loc.join(rel), digest)
            entries.append(ManifestEntry(rel, path.stat().st_size, digest))
            meter.advance(entries[-1].size)
        manifest = Manifest(entries)
        self._put_bytes(manifest.to_json().encode(), loc.join(MANIFEST_NAME))
        meter.done()
        return manifest

    def read_manifest(self, uri: str) -> Manifest:
        """The manifest of a complete upload; `IncompleteUploadError` when there is none."""
        loc = S3Uri.parse(uri).join(MANIFEST_NAME)
        if self._stat(loc) is None:
            raise IncompleteUploadError(
                f"{self.endpoint_url}: incomplete upload: {S3Uri.parse(uri)} has no {MANIFEST_NAME} "
                "(the upload never finished, or this is not a directory upload)"
            )

        def read() -> str:
            with self._errors(str(loc)):
                response = self._client.get_object(loc.bucket, loc.key)
                try:
                    return response.read().decode()
                finally:
                    response.close()
                    response.release_conn()

        return Manifest.from_json(self._retry(read), str(loc))

    def download_dir(self, uri: str, local_dir: Path) -> Manifest:
        loc = S3Uri.parse(uri)
        manifest = self.read_manifest(uri)
        root = Path(local_dir)
        root.mkdir(parents=True, exist_ok=True)
        meter = _Progress(f"download {loc} -> {root}", len(manifest.files), self._cfg, self._progress)
        failures = []
        for entry in manifest.files:
            try:
                self._retry(
                    lambda e=entry: self._get_verified(loc.join(e.path), root / e.path, e.size, e.sha256)
                )
            except StoreUnavailable:
                raise
            except StoreError as err:
                failures.append(str(err))
            meter.advance(entry.size)
        if failures:
            raise StoreError(
                f"{len(failures)} object(s) of {loc} failed verification:\n  " + "\n  ".join(failures)
            )
        meter.done()
        return manifest

    def fetch(self, uri: str, dest_dir: Path) -> Path:
        loc = S3Uri.parse(uri)
        name = PurePosixPath(loc.key).name or loc.bucket
        target = Path(dest_dir) / name
        if self._stat(loc.join(MANIFEST_NAME)) is not None:
            self.download_dir(uri, target)
        else:
            self.download_file(uri, target)
        return target

    # ---- internals --------------------------------------------------------------------------------

    def _retry(self, func: Callable[[], Any]) -> Any:
        """`func()`, again while it raises `StoreUnavailable`: `store.op_attempts` attempts with exponential
        backoff capped at `store.op_backoff_max_s`. Other errors are final at once."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        attempts = self._cfg.op_attempts
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=self._cfg.retry_backoff_s, max=self._cfg.op_backoff_max_s),
            retry=retry_if_exception_type(StoreUnavailable),
            before_sleep=lambda state: log.warning(
                "store: attempt %d/%d failed, retrying: %s",
                state.attempt_number,
                attempts,
                state.outcome.exception() if state.outcome else "",
            ),
            reraise=True,
        )
        try:
            return retrying(func)
        except StoreUnavailable as err:
            if attempts > 1 and "attempts)" not in str(err):
                raise StoreUnavailable(f"{err} ({attempts} attempts)") from err
            raise

    def _put(self, path: Path, loc: S3Uri, digest: str) -> None:
        def put() -> None:
            with self._errors(str(loc)):
                self._client.fput_object(loc.bucket, loc.key, str(path), metadata={SHA256_META: digest})

        self._retry(put)

    def _put_bytes(self, data: bytes, loc: S3Uri) -> None:
        import io

        digest = hashlib.sha256(data).hexdigest()

        def put() -> None:
            with self._errors(str(loc)):
                self._client.put_object(
                    loc.bucket, loc.key, io.BytesIO(data), len(data), metadata={SHA256_META: digest}
                )

        self._retry(put)

    def _stat(self, loc: S3Uri) -> Any | None:
        if not loc.key:
            return None
        return self._retry(lambda: self._stat_once(loc))

    def _stat_once(self, loc: S3Uri) -> Any | None:
        from minio.error import S3Error

        try:
            with self._errors(str(loc), passthrough=S3Error):
                return self._client.stat_object(loc.bucket, loc.key)
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise self._translate(err, str(loc)) from err

    def _get_verified(self, loc: S3Uri, path: Path, expected_size: int, expected_sha256: str | None) -> None:
        """Stream `loc` into `path.part`, hash it, and rename only when size and sha256 match."""
        from minio.error import S3Error

        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        digest, size = hashlib.sha256(), 0
        try:
            with self._errors(str(loc), passthrough=S3Error):
                response = self._client.get_object(loc.bucket, loc.key)
                try:
                    with part.open("wb") as handle:
                        for chunk in response.stream(_CHUNK):
                            digest.update(chunk)
                            size += len(chunk)
                            handle.write(chunk)
                finally:
                    response.close()
                    response.release_conn()
        except S3Error as err:
            part.unlink(missing_ok=True)
            if err.code in ("NoSuchKey", "NoSuchObject"):
                raise StoreError(f"{loc}: missing (listed in the manifest but not in the bucket)") from err
            raise self._translate(err, str(loc)) from err
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        problem = None
        if size != expected_size:
            problem = f"size {size} bytes, manifest says {expected_size}"
        elif expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            problem = f"sha256 {digest.hexdigest()}, manifest says {expected_sha256}"
        if problem:
            part.unlink(missing_ok=True)
            raise StoreError(f"{loc}: corrupted ({problem})")
        part.replace(path)

    @contextmanager
    def _errors(self, where: str, passthrough: type[BaseException] | None = None) -> Iterator[None]:
        """Turn client exceptions into `StoreError`s that name the endpoint and the object."""
        from minio.error import MinioException, S3Error, ServerError
        from urllib3.exceptions import HTTPError

        try:
            yield
        except StoreError:
            raise
        except S3Error as err:
            if passthrough is not None and isinstance(err, passthrough):
                raise
            raise self._translate(err, where) from err
        except (HTTPError, ConnectionError) as err:
            raise StoreUnavailable(
                f"{self.endpoint_url}: unreachable while accessing {where} "
                f"(after {self._cfg.max_retries} retries, connect timeout {self._cfg.connect_timeout_s} s): {err}"
            ) from err
        except ServerError as err:  # a 5xx without an S3 error body
            raise StoreUnavailable(f"{self.endpoint_url}: {where}: server error: {err}") from err
        except MinioException as err:
            raise StoreError(f"{self.endpoint_url}: {where}: {err}") from err

    def _translate(self, err: Any, where: str) -> StoreError:
        if err.code in _TRANSIENT_CODES:
            return StoreUnavailable(f"{self.endpoint_url}: {where}: {err.code}: {err.message}")
        if err.code == "NoSuchBucket":
            bucket = err.bucket_name or S3Uri.parse(where).bucket
            return StoreError(f"{self.endpoint_url}: bucket '{bucket}' does not exist (accessing {where})")
        if err.code in _CREDENTIAL_CODES:
            return StoreError(
                f"{self.endpoint_url}: credentials rejected ({err.code}) accessing {where}; "
                "check store.access_key/secret_key (env AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        return StoreError(f"{self.endpoint_url}: {where}: {err.code}: {err.message}")


def make_client(cfg: StoreConfig) -> Any:
    """A `minio.Minio` with bounded timeouts and retries, so a dead endpoint fails in seconds."""
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s),
        retries=urllib3.Retry(
            total=cfg.max_retries,
            backoff_factor=cfg.retry_backoff_s,
            status_forcelist=[500, 502, 503, 504],
        ),
    )
    return Minio(
        cfg.endpoint,
        access_key=cfg.access_key.get_secret_value(),
        secret_key=cfg.secret_key.get_secret_value(),
        secure=cfg.secure,
        region=cfg.region,
        http_client=http,
    )


def _meta_sha256(metadata: Any) -> str | None:
    for key, value in (metadata or {}).items():
        if key.lower() == f"x-amz-meta-{SHA256_META}":
            return value
    return None


def _tree_files(root: Path) -> list[str]:
    """Regular files under root as sorted relative POSIX paths; refuses what cannot round-trip."""
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(root).as_posix()
        if not path.is_file():
            raise StoreError(f"{path}: not a regular file; cannot upload it")
        if rel == MANIFEST_NAME:
            raise StoreError(f"{path}: '{MANIFEST_NAME}' is reserved for the upload manifest")
        files.append(rel)
    return files


class _Progress:
    """Logs a line every N files or M MiB of a directory transfer."""

    def __init__(self, what: str, total_files: int, cfg: StoreConfig, emit: Callable[[str], None]) -> None:
        self._what, self._total, self._emit = what, total_files, emit
        self._every_files, self._every_bytes = cfg.progress_every_files, cfg.progress_every_mb * _MIB
        self._files = self._bytes = self._last_files = self._last_bytes = 0

    def advance(self, nbytes: int) -> None:
        self._files += 1
        self._bytes += nbytes
        if (
            self._files - self._last_files >= self._every_files
            or self._bytes - self._last_bytes >= self._every_bytes
        ):
            self._last_files, self._last_bytes = self._files, self._bytes
            self._emit(f"{self._what}: {self._files}/{self._total} files, {self._bytes / _MIB:.1f} MiB")

    def done(self) -> None:
        self._emit(f"{self._what}: done, {self._files} files, {self._bytes / _MIB:.1f} MiB")
