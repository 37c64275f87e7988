"""PEP 517 backend that re-packs the installed upstream `laminardb` wheel as `laminardb_native`.

Why: our own import package is called `laminardb`, so the engine must live under another
name. The compiled module must keep its file name `_laminardb*.so` (its init symbol is
`PyInit__laminardb`) and its shared libraries must stay in a sibling `laminardb.libs/`
(the `.so` RPATH is `$ORIGIN/../laminardb.libs`). Only two absolute imports need patching.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import os
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

NAME = "laminardb_native"
DIST = "laminardb_native"
VERSION = "0.17.0"
_PATCHES = (
    ("from laminardb._laminardb import", f"from {NAME}._laminardb import"),
    ("from laminardb.types import", f"from {NAME}.types import"),
)


def _upstream() -> tuple[Path, Path, str]:
    spec = importlib.util.find_spec("laminardb")
    if spec is None or spec.origin is None:
        raise RuntimeError("the build requirement laminardb==0.17.0 is not installed")
    pkg = Path(spec.origin).parent
    dist = metadata.distribution("laminardb")
    if dist.version != VERSION:
        raise RuntimeError(f"expected laminardb {VERSION}, found {dist.version}")
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise RuntimeError("upstream WHEEL file has no Tag line")
    return pkg, pkg.parent / "laminardb.libs", tags[0]


def _files() -> list[tuple[str, bytes, int]]:
    pkg, libs, _ = _upstream()
    out: list[tuple[str, bytes, int]] = []
    for path in sorted(pkg.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        data = path.read_bytes()
        if path.name == "__init__.py":
            text = data.decode()
            for old, new in _PATCHES:
                text = text.replace(old, new)
            data = text.encode()
        out.append((f"{NAME}/{path.relative_to(pkg).as_posix()}", data, path.stat().st_mode))
    if libs.is_dir():
        for path in sorted(libs.iterdir()):
            out.append((f"laminardb.libs/{path.name}", path.read_bytes(), path.stat().st_mode))
    return out


def _metadata() -> str:
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {DIST.replace('_', '-')}\n"
        f"Version: {VERSION}\n"
        "Summary: The LaminarDB 0.17.0 engine, importable as laminardb_native\n"
        "Requires-Python: >=3.11\n"
        "Requires-Dist: pyarrow>=14\n"
    )


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings: object = None) -> list[str]:
    return []


def get_requires_for_build_sdist(config_settings: object = None) -> list[str]:
    return []


def build_wheel(
    wheel_directory: str, config_settings: object = None, metadata_directory: object = None
) -> str:
    _, _, tag = _upstream()
    info = f"{DIST}-{VERSION}.dist-info"
    filename = f"{DIST}-{VERSION}-{tag}.whl"
    entries = _files()
    entries.append((f"{info}/METADATA", _metadata().encode(), 0o644))
    wheel = f"Wheel-Version: 1.0\nGenerator: laminardb-repack\nRoot-Is-Purelib: false\nTag: {tag}\n"
    entries.append((f"{info}/WHEEL", wheel.encode(), 0o644))
    record = [_record_line(n, d) for n, d, _ in entries] + [f"{info}/RECORD,,"]
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode(), 0o644))
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            zi = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = (mode & 0o777 | 0o100000) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return filename


def build_sdist(sdist_directory: str, config_settings: object = None) -> str:
    base = f"{DIST}-{VERSION}"
    here = Path(__file__).parent
    filename = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz") as tf:
        for name in ("pyproject.toml", "repack.py"):
            tf.add(here / name, arcname=f"{base}/{name}")
        pkg_info = _metadata().encode()
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size = len(pkg_info)
        tf.addfile(ti, io.BytesIO(pkg_info))
    return filename
