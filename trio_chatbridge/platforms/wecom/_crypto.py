"""WeCom's AES-256-CBC: webhook envelopes (docs/protocols/wecom.md#encryption) and media files
(docs/protocols/wecom.md#media).

Both use ``IV = key[:16]`` and PKCS#7 padding to **32**-byte blocks. A webhook plaintext is
``random16 ‖ uint32_be(len) ‖ message ‖ receive_id``; a media file is the raw bytes. Padding is
validated in full (the reference Python client does not), and signatures are compared in
constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from typing import Final, final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..._errors import ConfigurationError, ProtocolError

PAD_BLOCK: Final = 32


def pad(data: bytes) -> bytes:
    """PKCS#7 to a multiple of 32 bytes (a full block of 32 when already aligned)."""
    n = PAD_BLOCK - len(data) % PAD_BLOCK
    return data + bytes([n]) * n


def unpad(data: bytes) -> bytes:
    """Undo :func:`pad`, checking every padding byte."""
    if not data:
        raise ProtocolError("nothing to unpad")
    n = data[-1]
    if not 1 <= n <= PAD_BLOCK or len(data) < n or data[-n:] != bytes([n]) * n:
        raise ProtocolError("bad PKCS#7 padding: wrong key or damaged data")
    return data[:-n]


def _cbc(key: bytes, data: bytes, *, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(key[:16]))
    worker = cipher.encryptor() if encrypt else cipher.decryptor()
    return worker.update(data) + worker.finalize()


def lenient_b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not [3.1: the aeskey's alphabet is unconfirmed]."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("not base64") from exc


def decrypt_media(aeskey: str, data: bytes) -> bytes:
    """Decrypt a downloaded file with its per-URL ``aeskey`` (base64 of 32 bytes)."""
    key = lenient_b64decode(aeskey)
    if len(key) != 32:
        raise ProtocolError(f"media aeskey decodes to {len(key)} bytes, not 32")
    return decrypt_media_with_key(key, data)


def decrypt_media_with_key(key: bytes, data: bytes) -> bytes:
    if not data or len(data) % 16:
        raise ProtocolError(f"{len(data)} bytes of media is not whole AES blocks")
    return unpad(_cbc(key, data, encrypt=False))


def encrypt_media_with_key(key: bytes, data: bytes) -> bytes:
    """The emulator's side of :func:`decrypt_media`."""
    return _cbc(key, pad(data), encrypt=True)


@final
class WebhookCrypto:
    """Signs, encrypts and decrypts webhook payloads for one bot. Never shows its secrets."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str = "") -> None:
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigurationError("EncodingAESKey is not base64 (43 characters)") from exc
        if len(key) != 32:
            raise ConfigurationError(
                f"EncodingAESKey must decode to 32 bytes (43 characters), got {len(key)} bytes"
            )
        self._token = token
        self.key = key
        self.receive_id = receive_id

    def __repr__(self) -> str:
        return "WebhookCrypto(<secrets hidden>)"

    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        """SHA-1 of the sorted concatenation of token, timestamp, nonce and ciphertext."""
        return hashlib.sha1(
            "".join(sorted([self._token, timestamp, nonce, encrypt])).encode()
        ).hexdigest()

    def verify(self, signature: str, timestamp: str, nonce: str, encrypt: str) -> bool:
        """Constant-time check of a request's ``msg_signature``."""
        expected = self.signature(timestamp, nonce, encrypt)
        return hmac.compare_digest(expected.encode(), signature.encode())

    def encrypt(self, message: str, random16: bytes | None = None) -> str:
        """``message`` encrypted for a webhook answer (AES-256-CBC, PKCS#7 to 32 bytes, base64)."""
        plain = (
            (random16 or secrets.token_bytes(16))
            + struct.pack(">I", len(message.encode()))
            + message.encode()
            + self.receive_id.encode()
        )
        return base64.b64encode(_cbc(self.key, pad(plain), encrypt=True)).decode()

    def decrypt(self, encrypt: str) -> str:
        """The message inside a ciphertext; any damage is a :class:`ProtocolError`."""
        try:
            raw = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("ciphertext is not base64") from exc
        if not raw or len(raw) % 16:
            raise ProtocolError("ciphertext is not whole AES blocks")
        plain = unpad(_cbc(self.key, raw, encrypt=False))
        if len(plain) < 20:
            raise ProtocolError("plaintext too short for its framing")
        (length,) = struct.unpack(">I", plain[16:20])
        message, receive_id = plain[20 : 20 + length], plain[20 + length :]
        if len(message) != length:
            raise ProtocolError("plaintext length field is wrong")
        if receive_id.decode(errors="replace") != self.receive_id:
            raise ProtocolError("receive id does not match")
        try:
            return message.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("message is not UTF-8") from exc
