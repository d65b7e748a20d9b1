"""Keys that live outside the state directory: the audit MAC keyring and the checkpoint signing key.

Someone who can write ``--state`` but cannot read these keys cannot forge a valid audit chain
(every entry carries an HMAC-SHA256 under the MAC key) nor a checkpoint (Ed25519 signatures).

- The *current* MAC key is one file (``--audit-key-file`` / ``SANDBOX_AUDIT_KEY``; default
  ``<keys>/audit-mac.key``), 32 random bytes written as hex. Entries name the key id, so after
  a rotation the retired keys (``<keys>/audit-mac-<key id>.key``) keep old entries verifiable.
- The checkpoint signing key is an Ed25519 private key in PEM (``--signing-key-file`` /
  ``SANDBOX_SIGNING_KEY``; default ``<keys>/checkpoint-signing.pem``). Checkpoints verify with
  the public key alone.
- The keys directory (``--keys`` / ``SANDBOX_KEYS``) defaults to ``keys`` beside the state
  directory. Default keys are created on first use; a key inside the state directory is refused.
- The audit high-water mark (``--audit-mark-file`` / ``SANDBOX_AUDIT_MARK``; default
  ``<keys>/audit-mark.json``) must be *writable* by the gateway and outside the state directory:
  where the keys are a read-only secret mount (the Docker stack), it gets a small volume of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.errors import SandboxError
from sandbox.state.files import atomic_write

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAC_KEY_FILE = "audit-mac.key"
MARK_FILE = "audit-mark.json"  # the audit high-water mark (see chain.check_mark)
RETIRED_PREFIX = "audit-mac-"
SIGNING_KEY_FILE = "checkpoint-signing.pem"
RETIRED_SIGNING_PREFIX = "checkpoint-signing-"  # <prefix><key id>.pub: a retired public key (base64)
ADMIN_TOKEN_FILE = "admin.token"


class KeyUnavailable(SandboxError):
    """A key is missing, unreadable or in a place it must not be (a deployment error: 503)."""

    status = 503
    code = "key_unavailable"


def default_keys_dir(state_dir: Path) -> Path:
    return Path(state_dir).absolute().parent / "keys"


def check_outside(path: Path, state_dir: Path, what: str) -> None:
    """Refuse a key kept inside the state directory: whoever can write the state could read it."""
    p, s = Path(path).absolute().resolve(), Path(state_dir).absolute().resolve()
    if p == s or s in p.parents:
        raise KeyUnavailable(f"{what} {path} is inside the state directory {state_dir}; keep keys outside it")


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"sandbox-audit-mac\x00" + key).hexdigest()[:16]


def _read_hex_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise KeyUnavailable(f"{path}: not a readable audit MAC key ({exc})") from None
    if len(key) < 32:
        raise KeyUnavailable(f"{path}: an audit MAC key has at least 32 bytes")
    return key


@dataclass(frozen=True)
class MacKey:
    id: str
    secret: bytes

    def mac(self, message: str) -> str:
        return hmac.new(self.secret, f"{self.id}:{message}".encode(), hashlib.sha256).hexdigest()

    def check(self, message: str, mac: str | None) -> bool:
        return mac is not None and hmac.compare_digest(self.mac(message), mac)


class MacKeyring:
    """The current MAC key (created on first write when it is the default) and every retired one."""

    def __init__(self, keys_dir: Path, current_file: Path | None = None, *, create: bool = True,
                 mark_file: Path | None = None) -> None:
        self.dir = Path(keys_dir)
        self.current_file = Path(current_file) if current_file else self.dir / MAC_KEY_FILE
        self.mark_file = Path(mark_file) if mark_file else self.dir / MARK_FILE
        self.create = create
        self._current: MacKey | None = None

    @classmethod
    def for_state(cls, state_dir: Path, keys_dir: Path | None = None, current_file: Path | None = None,
                  *, create: bool = True, mark_file: Path | None = None) -> MacKeyring:
        keys = Path(keys_dir) if keys_dir else default_keys_dir(state_dir)
        ring = cls(keys, current_file, create=create, mark_file=mark_file)
        check_outside(ring.dir, state_dir, "the keys directory")
        check_outside(ring.current_file, state_dir, "the audit MAC key")
        check_outside(ring.mark_file, state_dir, "the audit high-water mark")
        ring.check_mark_is_no_key()
        return ring

    def check_mark_is_no_key(self) -> None:
        """The mark file is rewritten on every commit: it must not be (or look like) a key file."""
        mark = self.mark_file.resolve()
        names = (MAC_KEY_FILE, SIGNING_KEY_FILE, ADMIN_TOKEN_FILE)
        if (mark == self.current_file.resolve() or mark.name in names or mark.suffix in (".key", ".pem", ".pub")
                or mark.name.startswith((RETIRED_PREFIX, RETIRED_SIGNING_PREFIX))):
            raise SandboxError(f"{self.mark_file}: the audit high-water mark must not be a key file (it is"
                               " rewritten on every change); give it a name of its own, e.g. audit-mark.json")

    def current(self) -> MacKey:
        """The key new entries are MACed with; created (0600) when missing and allowed."""
        if self._current is None:
            if not self.current_file.exists():
                if not self.create:
                    raise KeyUnavailable(f"no audit MAC key at {self.current_file}")
                try:
                    atomic_write(self.current_file, secrets.token_bytes(32).hex().encode() + b"\n", exclusive=True)
                except OSError as exc:
                    raise KeyUnavailable(f"cannot create the audit MAC key {self.current_file}: {exc}") from None
            secret = _read_hex_key(self.current_file)
            self._current = MacKey(key_id(secret), secret)
        return self._current

    def available(self) -> bool:
        return self.current_file.exists()

    def derived(self, purpose: str) -> bytes:
        """A 32-byte secret for another ``purpose`` (the web UI's session and CSRF signatures),
        derived from the current MAC key with HKDF-SHA256: kept outside the state directory like
        the key itself, needing no file of its own, and changing when the MAC key is rotated."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        info = f"sandbox-derived\x00{purpose}".encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self.current().secret)

    def all(self) -> dict[str, MacKey]:
        found: dict[str, MacKey] = {}
        paths = sorted(self.dir.glob(f"{RETIRED_PREFIX}*.key")) if self.dir.is_dir() else []
        if self.current_file.exists():
            paths.append(self.current_file)
        for path in paths:
            secret = _read_hex_key(path)
            found[key_id(secret)] = MacKey(key_id(secret), secret)
        return found

    def rotate(self) -> tuple[str, str]:
        """Retire the current key (kept as ``audit-mac-<id>.key``) and start a new one; (old id, new id)."""
        old = self.current()
        retired = self.dir / f"{RETIRED_PREFIX}{old.id}.key"
        try:
            atomic_write(retired, old.secret.hex().encode() + b"\n", exclusive=True)
            atomic_write(self.current_file, secrets.token_bytes(32).hex().encode() + b"\n")
        except OSError as exc:
            raise KeyUnavailable(f"cannot rotate the audit MAC key: {exc}") from None
        self._current = None
        return old.id, self.current().id


# -- Ed25519 checkpoint signing ---------------------------------------------------------------------
def public_key_id(raw_public: bytes) -> str:
    return hashlib.sha256(b"sandbox-checkpoint\x00" + raw_public).hexdigest()[:16]


class SigningKey:
    """The gateway's Ed25519 checkpoint key (private part outside --state; public part published)."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self.create = create
        self._key: Ed25519PrivateKey | None = None  # loaded lazily
        self._stamp: tuple[int, int] | None = None  # (inode, mtime) of the file _key was read from

    @classmethod
    def for_state(cls, state_dir: Path, keys_dir: Path | None = None, path: Path | None = None,
                  *, create: bool = True) -> SigningKey:
        folder = Path(keys_dir) if keys_dir else default_keys_dir(state_dir)
        target = Path(path) if path else folder / SIGNING_KEY_FILE
        check_outside(target, state_dir, "the checkpoint signing key")
        return cls(target, create=create)

    def available(self) -> bool:
        return self.path.exists() or self.create

    def _load(self) -> Ed25519PrivateKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if self._key is not None and self._stamp == self._file_stamp():
            return self._key  # unchanged: a rotation in another process replaces the file (new inode)
        if not self.path.exists():
            if not self.create:
                raise KeyUnavailable(f"no checkpoint signing key at {self.path}")
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            try:
                atomic_write(self.path, pem, exclusive=True)
            except OSError as exc:
                raise KeyUnavailable(f"cannot create the checkpoint signing key {self.path}: {exc}") from None
        try:
            key = serialization.load_pem_private_key(self.path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise KeyUnavailable(f"{self.path}: not a readable Ed25519 private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyUnavailable(f"{self.path}: not an Ed25519 key")
        self._key, self._stamp = key, self._file_stamp()
        return key

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def public_raw(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._load().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw()).decode("ascii")

    def key_id(self) -> str:
        return public_key_id(self.public_raw())

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._load().sign(message)).decode("ascii")

    def retired_public(self) -> dict[str, str]:
        """Key id -> base64 public key of every retired signing key (beside the private key file),
        published with the current one so checkpoints signed before a rotation keep verifying."""
        found: dict[str, str] = {}
        folder = self.path.parent
        for path in sorted(folder.glob(f"{RETIRED_SIGNING_PREFIX}*.pub")) if folder.is_dir() else []:
            try:
                public = path.read_text(encoding="ascii").strip()
                raw = base64.b64decode(public, validate=True)
            except (OSError, ValueError):
                continue
            if len(raw) == 32:
                found[public_key_id(raw)] = public
        return found

    def rotate(self) -> tuple[str, str]:
        """Retire the current key (its public half kept as ``checkpoint-signing-<id>.pub``) and start a
        new one; (old id, new id). Raises :class:`KeyUnavailable` where the keys cannot be written."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        old_id, old_public = self.key_id(), self.public_b64()
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            retired = self.path.parent / f"{RETIRED_SIGNING_PREFIX}{old_id}.pub"
            if not retired.exists():
                atomic_write(retired, old_public.encode("ascii") + b"\n", exclusive=True)
            atomic_write(self.path, pem)
        except OSError as exc:
            raise KeyUnavailable(f"cannot rotate the checkpoint signing key {self.path}: {exc}") from None
        self._key = None
        return old_id, self.key_id()


def verify_signature(public_b64: str, message: bytes, signature_b64: str) -> bool:
    """Ed25519 verification with the public key only."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64, validate=True))
        key.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
