"""Sign model packages and re-pin the bundled models (run after every release export).

    python -m export.sign --key /path/outside/the/repo/ed25519.key assets/models/*.json

For each manifest: validate it with the engine's reader, check the ``.onnx`` against the
manifest's sha256, write the detached Ed25519 signature ``<id>.sig`` beside it and verify it
back. When the manifests are the bundled ones (``assets/models``), the pin table
``desktop/engine/pins.py`` is rewritten with their package digests, so the app accepts exactly
these packages from its bundled folder. Commit the ``.json``, ``.onnx``, ``.sig`` files and
``pins.py`` together.

The private key is read from the path given and never written anywhere; a path inside the
repository is refused. The key must be one of the app's trusted keys
(``desktop.engine.trust.TRUSTED_KEYS``) unless ``--allow-untrusted-key`` is given.

A new key pair (first release, or key rotation)::

    python -m export.sign --generate-key /secure/place/ed25519.key

writes the private key (mode 0600, in a 0700 folder) and prints the public key to add to
``TRUSTED_KEYS``. See the README, "How a release is signed".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from desktop.engine import trust
from desktop.engine.errors import MedScreenError
from desktop.engine.manifest import load_verified_model, read_manifest
from desktop.engine.paths import bundled_models_dir

REPO = Path(__file__).resolve().parents[1]
PINS_FILE = REPO / "desktop" / "engine" / "pins.py"

_PINS_HEADER = '''\
"""Package digests of the models bundled in ``assets/models``: GENERATED, do not edit.

Rewritten by ``python -m export.sign --key PATH assets/models/*.json`` after a release export.
Each value is :func:`desktop.engine.trust.package_digest` of the manifest and its model file;
the registry refuses a bundled package whose digest differs, or whose id is not listed here.
"""

BUNDLED_PINS: dict[str, str] = {
'''


class SignError(MedScreenError):
    """A package or key that cannot be signed with, with the reason."""


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PKCS#8 PEM Ed25519 key from outside the repository."""
    resolved = path.expanduser().resolve()
    if resolved.is_relative_to(REPO):
        raise SignError(f"{path} is inside the repository; the private key must be kept outside")
    try:
        key = load_pem_private_key(resolved.read_bytes(), password=None)
    except OSError as exc:
        raise SignError(f"cannot read the signing key {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise SignError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignError(f"{path} is not an Ed25519 key")
    if os.name == "posix" and resolved.stat().st_mode & 0o077:
        print(f"warning: {path} is readable by other users; chmod 600 it", file=sys.stderr)
    return key


def generate_key(path: Path) -> Ed25519PrivateKey:
    """Create a new key pair at ``path`` (never overwriting one); returns the private key."""
    path = path.expanduser()
    if path.resolve().is_relative_to(REPO):
        raise SignError(f"{path} is inside the repository; keep the private key outside it")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SignError(f"{path} exists; refusing to overwrite a signing key") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def sign_package(manifest_path: Path, key: Ed25519PrivateKey) -> str:
    """Sign one package (manifest + model); returns its package digest for the pin table."""
    manifest = read_manifest(manifest_path)
    load_verified_model(manifest)  # the model file really is the one the manifest names
    doc = trust.signature_document(manifest.raw, key)
    sig_path = trust.signature_path(manifest_path)
    tmp = sig_path.with_name(sig_path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(sig_path)
    return trust.package_digest(manifest.raw, manifest.sha256)


def write_pins(pins: dict[str, str], path: Path = PINS_FILE) -> None:
    lines = [_PINS_HEADER]
    lines += [f'    "{model_id}": "{digest}",\n' for model_id, digest in sorted(pins.items())]
    lines.append("}\n")
    path.write_text("".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("manifests", nargs="*", type=Path, help="the <id>.json manifests to sign")
    p.add_argument("--key", type=Path, help="the Ed25519 private key (PEM), outside the repo")
    p.add_argument("--generate-key", type=Path, metavar="PATH", help="create a new key pair")
    p.add_argument(
        "--pins",
        choices=("auto", "yes", "no"),
        default="auto",
        help="rewrite desktop/engine/pins.py (auto: when the manifests are the bundled ones)",
    )
    p.add_argument(
        "--allow-untrusted-key",
        action="store_true",
        help="sign with a key the app does not trust (e.g. a throw-away test key)",
    )
    args = p.parse_args(argv)
    try:
        return _run(args)
    except MedScreenError as exc:
        print(f"export.sign: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.generate_key:
        key = generate_key(args.generate_key)
        raw = trust.public_raw(key)
        print(f"wrote {args.generate_key} (keep it secret, outside the repository)")
        print(f"fingerprint {trust.key_fingerprint(raw)}; add to TRUSTED_KEYS in")
        print(f'desktop/engine/trust.py:  "<name>": "{raw.hex()}",')
        return 0
    if not args.key or not args.manifests:
        raise SignError("give --key PATH and the manifests to sign (or --generate-key PATH)")
    key = load_private_key(args.key)
    fingerprint = trust.key_fingerprint(trust.public_raw(key))
    if fingerprint not in trust.trusted_fingerprints() and not args.allow_untrusted_key:
        raise SignError(
            f"key {fingerprint} is not among the app's trusted keys (desktop/engine/trust.py "
            f"TRUSTED_KEYS); add its public half first, or pass --allow-untrusted-key"
        )
    bundled = bundled_models_dir().resolve()
    digests: dict[str, str] = {}
    for path in args.manifests:
        digest = sign_package(path, key)
        model_id = read_manifest(path).id
        digests[model_id] = digest
        trusted = fingerprint in trust.trusted_fingerprints()
        if trusted:
            trust.verify_signature(read_manifest(path).raw, path)  # read back, as the app will
        print(f"signed {path} ({model_id}) with key {fingerprint}: package {digest}")
    in_bundle = all(path.resolve().parent == bundled for path in args.manifests)
    if args.pins == "yes" or (args.pins == "auto" and in_bundle):
        _update_pins(digests, bundled)
    else:
        print("pin table not changed (these are not the bundled manifests)")
    return 0


def _update_pins(digests: dict[str, str], bundled: Path) -> None:
    """Merge the new digests into the pin table; ids with no manifest left are dropped."""
    from desktop.engine.pins import BUNDLED_PINS

    shipped = {read_manifest(p).id for p in bundled.glob("*.json")}
    pins = {k: v for k, v in BUNDLED_PINS.items() if k in shipped}
    pins.update(digests)
    write_pins(pins)
    unpinned = sorted(shipped - set(pins))
    print(f"updated {PINS_FILE.relative_to(REPO)}: {', '.join(sorted(pins))}")
    if unpinned:
        print(f"warning: bundled models not signed/pinned: {', '.join(unpinned)}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
