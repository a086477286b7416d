from __future__ import annotations

import gc
import json
import pickle
import sqlite3
from collections.abc import Callable
from pathlib import Path

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given

import trio_chatbridge as cb
from trio_chatbridge.stores._codec import decode_message

text = st.text(max_size=20)
optional_text = st.none() | text
atoms = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
handles = st.dictionaries(text, atoms, max_size=3).map(cb.Handle.of)
media = st.builds(
    cb.Media,
    kind=st.sampled_from(["image", "file", "voice", "video"]),
    name=optional_text,
    size=st.none() | st.integers(0, 2**40),
    ref=handles,
)
parts = st.one_of(
    st.builds(cb.Text, text),
    st.builds(cb.Image, media),
    st.builds(cb.File, media),
    st.builds(cb.Voice, media, optional_text, st.none() | st.floats(0, 1e4)),
    st.builds(cb.Video, media, st.none() | st.floats(0, 1e4)),
    st.builds(cb.Quote, text, optional_text),
    st.builds(cb.Mention, text, optional_text),
)
messages = st.builds(
    cb.Message,
    platform=text,
    account=text,
    id=text,
    chat=st.builds(cb.Chat, text, st.sampled_from(["direct", "group"]), optional_text),
    sender=st.builds(cb.Sender, text, optional_text, st.booleans()),
    parts=st.lists(parts, max_size=4).map(tuple),
    timestamp=st.floats(0, 2e9),
    reply_handle=handles,
    raw=st.binary(max_size=40),
)

# A message with one part of each shape that carries data, and its journal row (a known
# answer: a change to the row's format shows here first).
KNOWN = cb.Message(
    platform="weixin",
    account="bot",
    id="42",
    chat=cb.Chat("amy"),
    sender=cb.Sender("amy", "Amy"),
    parts=(
        cb.Quote("earlier", "41"),
        cb.Text("hi"),
        cb.Image(cb.Media("image", "a.png", 12, ref=cb.Handle.of(aes_key="K"))),
    ),
    timestamp=1764000000.5,
    reply_handle=cb.Handle.of(to_user_id="amy", context_token="T"),
    raw=b'{"message_id":42}',
)
KNOWN_ROW = (
    '{"platform":"weixin","account":"bot","id":"42",'
    '"chat":{"id":"amy","kind":"direct","title":null},'
    '"sender":{"id":"amy","name":"Amy","is_bot":false},'
    '"parts":[{"kind":"quote","text":"earlier","message_id":"41"},{"kind":"text","text":"hi"},'
    '{"kind":"image","media":{"kind":"image","name":"a.png","size":12,'
    '"ref":{"entries":[["aes_key","K"]]}}}],'
    '"timestamp":1764000000.5,'
    '"reply_handle":{"entries":[["to_user_id","amy"],["context_token","T"]]},'
    '"raw":"eyJtZXNzYWdlX2lkIjo0Mn0="}'
)
# The same message as the first format wrote it (Message.to_json, before 0.x of 2026-12):
# handles and raw as JSON objects.
FIRST_FORMAT_ROW = (
    '{"platform": "weixin", "account": "bot", "id": "42", '
    '"chat": {"id": "amy", "kind": "direct", "title": null}, '
    '"sender": {"id": "amy", "name": "Amy", "is_bot": false}, '
    '"parts": [{"text": "earlier", "message_id": "41", "kind": "quote"}, '
    '{"kind": "text", "text": "hi"}, {"media": {"kind": "image", "name": "a.png", "size": 12, '
    '"ref": {"aes_key": "K"}}, "kind": "image"}], "timestamp": 1764000000.5, '
    '"reply_handle": {"to_user_id": "amy", "context_token": "T"}, "raw": {"message_id": 42}}'
)


def journal_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [body for (body,) in db.execute("SELECT body FROM journal")]


@given(messages)
async def test_any_message_round_trips_through_the_journal(message: cb.Message) -> None:
    async with cb.SQLiteStore(":memory:", threaded=False) as store:
        assert await store.journal_add([message]) == [True]
        assert await store.journal_pending() == [message]


@given(messages)
def test_any_message_round_trips_through_msgspec_and_pickle(message: cb.Message) -> None:
    assert msgspec.json.decode(msgspec.json.encode(message), type=cb.Message) == message
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=cb.Message) == message
    assert pickle.loads(pickle.dumps(message)) == message


async def test_the_journal_row_of_a_known_message(tmp_path: Path) -> None:
    async with cb.SQLiteStore(tmp_path / "j.db", threaded=False) as store:
        await store.journal_add([KNOWN])
    assert journal_rows(tmp_path / "j.db") == [KNOWN_ROW]


async def store_holding(path: Path, row: str) -> cb.SQLiteStore:
    """A store file whose journal holds ``row`` as written by some version (not yet open)."""
    async with cb.SQLiteStore(path, threaded=False):
        pass  # creates the schema
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO journal (platform, account, message_id, body, received_at) "
            "VALUES ('weixin', 'bot', '42', ?, 0)",
            (row,),
        )
    return cb.SQLiteStore(path, threaded=False)


@pytest.mark.parametrize("row", [KNOWN_ROW, FIRST_FORMAT_ROW], ids=["current", "first-format"])
async def test_rows_of_either_format_are_read(tmp_path: Path, row: str) -> None:
    async with await store_holding(tmp_path / "j.db", row) as store:
        assert await store.journal_pending() == [KNOWN]


@pytest.mark.parametrize(
    "row",
    [
        *("", "{", "[]", '{"platform": 1}', '{"parts": 7}', '{"reply_handle": [1]}'),
        '{"account": null, "x": Infinity}',  # typed decoder stops at null, untyped at Infinity
    ],
)
async def test_a_row_that_is_no_message_is_a_protocol_error_set_aside(
    tmp_path: Path, row: str
) -> None:
    """A pending row that holds no message is set aside (marked failed with the codec's
    ProtocolError, counted), not raised: it stopped every start of a bridge on the file."""
    async with await store_holding(tmp_path / "j.db", row) as store:
        assert await store.journal_pending() == []
        assert store.undecodable == 1
        with pytest.raises(cb.ProtocolError, match="not a serialised Message"):
            await store.journal_entry(("weixin", "bot", "42"))
    with sqlite3.connect(tmp_path / "j.db") as db:
        (error,) = db.execute("SELECT error FROM outcomes").fetchone()
    db.close()
    assert error.startswith("undecodable journal record: not a serialised Message")


# Bodies a journal row might hold after a crash, a hand edit or another program's write: any
# text or bytes, JSON built from a message's own keys (so the typed decoder stops on a
# validation error and the untyped one runs), JSON that only Python writes (Infinity, NaN), and
# the known rows with a slice replaced.
MESSAGE_KEYS = (
    "platform account id chat sender parts kind media ref reply_handle raw timestamp text"
)
json_values = st.recursive(
    atoms | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(MESSAGE_KEYS.split()) | text,
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
spliced_rows = st.tuples(
    st.sampled_from([KNOWN_ROW, FIRST_FORMAT_ROW]), st.integers(0, 500), st.integers(0, 20), text
).map(lambda r: r[0][: r[1]] + r[3] + r[0][r[1] + r[2] :])
bodies = st.one_of(
    st.text(),
    st.binary(),
    json_values.map(json.dumps),
    json_values.map(lambda value: json.dumps(value).encode()),
    spliced_rows,
)


@given(bodies)
def test_decoding_any_body_gives_a_message_or_a_protocol_error(body: str | bytes) -> None:
    """Whatever a row holds, the codec answers with a Message or a ProtocolError: anything
    else escapes the stores' set-aside and stops every start of a bridge on the file."""
    try:
        assert isinstance(decode_message(body), cb.Message)
    except cb.ProtocolError as exc:
        assert str(exc).startswith("not a serialised Message")


def test_secrets_stay_out_of_repr() -> None:
    message = cb.Message(
        platform="weixin",
        account="bot",
        id="1",
        chat=cb.Chat("u1"),
        sender=cb.Sender("u1"),
        parts=(cb.Image(cb.Media("image", ref=cb.Handle.of(aes_key="SECRETKEY"))),),
        reply_handle=cb.Handle.of(context_token="SECRETTOKEN"),
        raw=b'{"context_token": "SECRETTOKEN"}',
    )
    assert "SECRET" not in repr(message)
    assert "SECRET" not in repr(list(message.__rich_repr__()))
    assert "context_token" in repr(message)  # the handle's keys are shown, not its values


def test_a_handle_reads_like_a_mapping() -> None:
    handle = cb.Handle.of({"req_id": "r1"}, life=3, late=None)
    assert handle["req_id"] == "r1" and handle.get("life") == 3 and handle.get("x", 0) == 0
    assert "late" in handle and "x" not in handle and len(handle) == 3
    assert dict(handle) == {"req_id": "r1", "life": 3, "late": None}
    assert dict(handle, more=True)["more"] is True
    with pytest.raises(KeyError):
        handle["x"]
    assert hash(handle) == hash(cb.Handle.of(req_id="r1", life=3, late=None))


@pytest.mark.parametrize(
    "value", [[1], {"a": 1}, b"x", object(), 2**64, -(2**63) - 1, float("inf"), float("nan")]
)
def test_a_handle_holds_atoms_only(value: object) -> None:
    with pytest.raises(TypeError, match=r"atoms only|64 bits|finite"):
        cb.Handle.of(x=value)  # type: ignore[arg-type]


def test_media_refuses_a_dict_for_a_handle() -> None:
    """(A message's reply handle is checked where it enters the bridge: test_bridge.py.)"""
    with pytest.raises(TypeError, match="ref is a Handle"):
        cb.Media("image", ref={"key": "k"})  # type: ignore[arg-type]


def test_records_are_frozen_and_hashable() -> None:
    message = cb.Message("p", "a", "1", cb.Chat("c"), cb.Sender("u"), (cb.Text("x"),))
    assert hash(message) == hash(msgspec.structs.replace(message))
    with pytest.raises(AttributeError):
        message.id = "2"  # type: ignore[misc]
    assert hash(cb.Text("x")) == hash(cb.Text("x")) and cb.Chat("c") == cb.Chat("c")


def test_raw_json_decodes_on_demand() -> None:
    message = cb.Message("p", "a", "1", cb.Chat("c"), cb.Sender("u"), (), raw=b'{"a": [1]}')
    assert message.raw_json() == {"a": [1]}
    assert message.raw_json() is not message.raw_json()  # a fresh value each call
    assert msgspec.structs.replace(message, raw=b"").raw_json() is None
    with pytest.raises(cb.ProtocolError, match="not JSON"):
        msgspec.structs.replace(message, raw=b"\xff").raw_json()


def test_text_joins_text_parts_and_transcripts() -> None:
    message = cb.Message(
        platform="p",
        account="a",
        id="1",
        chat=cb.Chat("c"),
        sender=cb.Sender("u"),
        parts=(cb.Text("hello"), cb.Voice(cb.Media("voice"), transcript="spoken"), cb.Mention("x")),
    )
    assert message.text == "hello\nspoken"


def tracked_per_kept(make: Callable[[int], object], count: int = 200) -> float:
    """GC-tracked objects each kept message adds, after a collection."""
    gc.collect()
    before = len(gc.get_objects())
    kept = [make(n) for n in range(count)]
    gc.collect()
    added = len(gc.get_objects()) - before - 1  # the list itself
    assert all(not gc.is_tracked(m) for m in kept)
    return added / len(kept)


def test_a_kept_message_is_at_most_one_tracked_object() -> None:
    def make(n: int) -> cb.Message:
        return msgspec.structs.replace(KNOWN, id=str(n), raw=KNOWN.raw + str(n).encode())

    assert tracked_per_kept(make) <= 1
