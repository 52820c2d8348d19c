"""DistServe `.ds` dataset files: Python marshal of {"dataset_name", "reqs": [(prompt, prompt_len,
output_len)]}. Read for compatibility (and written for round-trip tests).

NOTE: marshal is not safe on untrusted input, so only regular files on a local filesystem are
unmarshalled: URLs, UNC paths and network mounts (NFS, CIFS/SMB, sshfs, ...) are refused, and
the loaded object is validated before anything uses it.
"""

from __future__ import annotations

import marshal
import os
from collections.abc import Sequence
from pathlib import Path

from dataset.common import DatasetRequest

NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "fuse.sshfs",
        "sshfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.rclone",
        "davfs",
        "fuse.davfs2",
    }
)
MAX_DS_BYTES = 2 << 30


def _mount_fs_type(path: Path, mounts_file: str = "/proc/mounts") -> str | None:
    """Filesystem type of the longest mount point containing `path` (None if unknown)."""
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return None
    best, fs_type = "", None
    target = str(path)
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, fs_type = mnt, parts[2]
    return fs_type


def check_local_file(path: str | os.PathLike, mounts_file: str = "/proc/mounts") -> Path:
    """Resolve `path` and raise ValueError unless it is a regular file on a local filesystem."""
    raw = os.fspath(path)
    if "://" in raw or raw.startswith(("//", "\\\\")):
        raise ValueError(f"refusing to unmarshal a network path: {raw}")
    p = Path(raw).resolve()
    if not p.is_file():
        raise ValueError(f"not a regular local file: {raw}")
    fs_type = _mount_fs_type(p, mounts_file)
    if fs_type is not None and fs_type.lower() in NETWORK_FS_TYPES:
        raise ValueError(f"refusing to unmarshal a file on a network filesystem ({fs_type}): {raw}")
    if p.stat().st_size > MAX_DS_BYTES:
        raise ValueError(f"{raw} is larger than {MAX_DS_BYTES} bytes")
    return p


def _validate(obj: object, path: str) -> tuple[str, list[DatasetRequest]]:
    if not isinstance(obj, dict) or not isinstance(obj.get("reqs"), list | tuple):
        raise ValueError(f"{path}: not a DistServe dataset (expected a dict with 'reqs')")
    reqs = []
    for i, item in enumerate(obj["reqs"]):
        ok = (
            isinstance(item, list | tuple)
            and len(item) == 3
            and isinstance(item[0], str)
            and isinstance(item[1], int)
            and isinstance(item[2], int)
        )
        if not ok:
            raise ValueError(f"{path}: reqs[{i}] is not (prompt: str, prompt_len, output_len)")
        reqs.append(DatasetRequest(item[0], item[1], item[2], id=str(i)))
    return str(obj.get("dataset_name", "")), reqs


def read_ds_named(path: str | os.PathLike) -> tuple[str, list[DatasetRequest]]:
    """(dataset_name, requests) of a local `.ds` file."""
    p = check_local_file(path)
    obj = marshal.loads(p.read_bytes())
    return _validate(obj, os.fspath(path))


def read_ds(path: str | os.PathLike) -> list[DatasetRequest]:
    return read_ds_named(path)[1]


def write_ds(path: str | os.PathLike, dataset_name: str, reqs: Sequence[DatasetRequest]) -> Path:
    """Write DistServe's `.ds` format (what its `Dataset.dump` produces)."""
    out = Path(path)
    payload = {
        "dataset_name": dataset_name,
        "reqs": [(r.prompt, r.prompt_len, r.output_len) for r in reqs],
    }
    out.write_bytes(marshal.dumps(payload))
    return out
