"""Packages: the manifest, file hashes, the `.emp` form, signing and verification."""

from .keys import PublicKey, generate_keypair, load_private_key, load_public_key
from .layout import FORMAT, MANIFEST, REPORT, SIGNATURE, SUFFIX
from .manifest import FileEntry, Manifest, package_id, parse_manifest
from .reader import PackageReader, open_package
from .store import describe_package, open_verified, read_verified_model, sign_package
from .verify import VerifiedPackage, verify_package
from .writer import write_package

__all__ = [
    "FORMAT", "MANIFEST", "REPORT", "SIGNATURE", "SUFFIX", "FileEntry", "Manifest", "PackageReader", "PublicKey",
    "VerifiedPackage", "describe_package", "generate_keypair", "load_private_key", "load_public_key",
    "open_package", "open_verified", "package_id", "parse_manifest", "read_verified_model", "sign_package",
    "verify_package", "write_package",
]
