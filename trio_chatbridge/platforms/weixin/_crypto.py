"""AES-128-ECB with PKCS#7, as the WeChat CDN uses it, and the two encodings of its keys.

See ``docs/protocols/weixin.md#media``.
"""

from __future__ import annotations

import base64
import binascii
import string

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..._errors import ProtocolError

BLOCK = 16  # bytes
_HEX = frozenset(string.hexdigits.encode())


def encrypt(key: bytes, plaintext: bytes) -> bytes:
    """AES-128-ECB of ``plaintext`` padded with PKCS#7."""
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(_check_key(key)), modes.ECB()).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def decrypt(key: bytes, ciphertext: bytes) -> bytes:
    """Undo :func:`encrypt`; a wrong key or damaged data is a :class:`ProtocolError`."""
    if not ciphertext or len(ciphertext) % BLOCK:
        raise ProtocolError(f"ciphertext of {len(ciphertext)} bytes is not whole AES blocks")
    decryptor = Cipher(algorithms.AES(_check_key(key)), modes.ECB()).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise ProtocolError("bad PKCS#7 padding: wrong key or damaged media") from exc


def parse_aes_key(encoded: str) -> bytes:
    """A CDN ``aes_key``: base64 of the 16 raw bytes, or of their 32 hex digits.

    See ``docs/protocols/weixin.md#media-download``.
    """
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("aes_key is not base64") from exc
    if len(raw) == BLOCK:
        return raw
    if len(raw) == 2 * BLOCK and all(c in _HEX for c in raw):
        return bytes.fromhex(raw.decode())
    raise ProtocolError(f"aes_key decodes to {len(raw)} bytes: neither a key nor its hex")


def parse_hex_key(hex_key: str) -> bytes:
    """An image's ``aeskey``: the 16-byte key as 32 hex digits."""
    try:
        key = bytes.fromhex(hex_key)
    except ValueError as exc:
        raise ProtocolError("image aeskey is not hex") from exc
    return _check_key(key)


def _check_key(key: bytes) -> bytes:
    if len(key) != BLOCK:
        raise ProtocolError(f"an AES-128 key has 16 bytes, not {len(key)}")
    return key
