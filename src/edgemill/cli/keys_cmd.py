"""`edgemill keys generate DIR`, `edgemill sign PKG --key K`, `edgemill verify PKG --trusted-key P`"""

from __future__ import annotations

import argparse
import os

from ..package import open_verified, sign_package
from ..package.keys import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, write_keypair
from .operators_cmd import add_audit_parser, add_operator_parsers
from .output import emit_json


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="signing keys, and a control plane's operator keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    gen = keys_sub.add_parser("generate", parents=[common], help="make a P-256 signing key pair in DIR",
                              description=f"Write DIR/{PRIVATE_KEY_NAME} (keep it secret) and DIR/{PUBLIC_KEY_NAME} "
                                          "(give it to devices).")
    gen.add_argument("dir")
    gen.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    gen.set_defaults(handler=generate)
    add_operator_parsers(keys_sub, common)
    add_audit_parser(sub, common)

    sign = sub.add_parser("sign", parents=[common], help="sign a package (OpenSSF model-signing format)")
    sign.add_argument("package")
    sign.add_argument("--key", required=True, help=f"private key ({PRIVATE_KEY_NAME})")
    sign.set_defaults(handler=sign_cmd)

    verify = sub.add_parser("verify", parents=[common], help="verify a package's signature and files")
    verify.add_argument("package")
    verify.add_argument("--trusted-key", action="append", required=True, metavar="PUB",
                        help="a trusted public key (repeat for several)")
    verify.set_defaults(handler=verify_cmd)


def generate(args: argparse.Namespace) -> int:
    private_path, public_path, key_id = write_keypair(args.dir, force=args.force)
    if args.json:
        emit_json({"private_key": str(private_path), "public_key": str(public_path), "key_id": key_id})
    else:
        print(f"wrote {private_path} (secret, mode 600) and {public_path}  key id {key_id}")
    return 0


def sign_cmd(args: argparse.Namespace) -> int:
    hint = sign_package(args.package, args.key, password=_password())
    if args.json:
        emit_json({"package": args.package, "key_id": hint[:16]})
    else:
        print(f"signed {args.package} with key {hint[:16]}")
    return 0


def _password() -> bytes | None:
    value = os.environ.get("EDGEMILL_KEY_PASSWORD")
    return value.encode() if value else None


def verify_cmd(args: argparse.Namespace) -> int:
    reader, verified = open_verified(args.package, args.trusted_key)
    reader.close()
    m = verified.manifest
    signer = verified.signed_by
    if args.json:
        emit_json({"verified": True, "package_id": verified.package_id, "name": m.name, "version": m.version,
                   "key_id": signer.short_id if signer else None, "files": len(m.files)})
    else:
        print(f"verified {m.name} {m.version} id {verified.package_id[:16]}: signature by key "
              f"{signer.short_id if signer else '?'} ({signer.label if signer else ''}), every file matches")
    return 0
