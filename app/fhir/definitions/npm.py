"""The official R4 example package (npm `hl7.fhir.r4.examples@4.0.1`), fetched on demand.

It holds every official example resource plus the SearchParameter bundle and the
CompartmentDefinitions. The vendored JSON next to this module is generated from it, and tests
that round-trip official examples use it too. Nothing at run time needs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE_NAME = "hl7.fhir.r4.examples"
PACKAGE_VERSION = "4.0.1"
# Files whose presence says an unpacked copy is complete (the tarball is unpacked atomically).
_MARKERS = ("Bundle-searchParams.json", "CompartmentDefinition-patient.json")

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CACHE = REPO_ROOT / ".cache"


class PackageUnavailable(RuntimeError):
    """The package is neither cached nor obtainable with `npm pack`."""


def _is_complete(package_dir: Path) -> bool:
    return all((package_dir / marker).is_file() for marker in _MARKERS)


def _candidate_dirs(cache_dir: Path) -> list[Path]:
    dirs = [cache_dir / f"{PACKAGE_NAME}-{PACKAGE_VERSION}" / "package"]
    override = os.environ.get("HESTIA_R4_EXAMPLES_DIR")
    if override:
        dirs.insert(0, Path(override))
    return dirs


def ensure_package(cache_dir: Path | None = None) -> Path:
    """The unpacked `package/` directory of hl7.fhir.r4.examples@4.0.1.

    Looks in `$HESTIA_R4_EXAMPLES_DIR` (if set), then in `<cache_dir>/hl7.fhir.r4.examples-4.0.1/
    package`; when neither is there, runs `npm pack` into the cache and unpacks it. Unpacking goes
    through a temporary directory and a rename, so concurrent test workers never see a half
    written copy.
    """
    cache = cache_dir or DEFAULT_CACHE
    for candidate in _candidate_dirs(cache):
        if _is_complete(candidate):
            return candidate
    target = cache / f"{PACKAGE_NAME}-{PACKAGE_VERSION}"
    cache.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise PackageUnavailable(f"npm is not installed; cannot fetch {PACKAGE_NAME}")
    with tempfile.TemporaryDirectory(dir=cache) as work:
        try:
            result = subprocess.run(
                [npm, "pack", f"{PACKAGE_NAME}@{PACKAGE_VERSION}", "--silent"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            raise PackageUnavailable(f"npm pack {PACKAGE_NAME} failed: {exc}") from exc
        tarball = Path(work) / result.stdout.strip().splitlines()[-1]
        unpack_dir = Path(work) / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(unpack_dir, filter="data")
        if not _is_complete(unpack_dir / "package"):
            raise PackageUnavailable(f"{tarball.name} does not contain the expected files")
        if target.exists() and not _is_complete(target / "package"):
            shutil.rmtree(target)  # left over from an interrupted run
        try:
            unpack_dir.rename(target)
        except OSError:
            # Another process won the race; its copy is as good as ours.
            if not _is_complete(target / "package"):
                raise
    return target / "package"
