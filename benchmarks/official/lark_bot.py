# mypy: ignore-errors
# (lark-oapi is the SDK under test, not a dependency of this project: not installed for mypy)
"""A bot written with lark-oapi, Lark's official Python SDK, as its users write one.

Run by ``benchmarks/official_clients.py`` with a Python that has ``lark-oapi`` (not a
dependency of this project): ``python lark_bot.py '<emulate lark JSON line>'``. On each user
message it uses the SDK's calls for every rich reply, and prints one JSON line per call
(``{"step", "ok", "detail"}``); a card action is answered with a toast and a new card.
"""

import io
import json
import sys
import threading

import lark_oapi as lark
from lark_oapi.api.im.v1 import (
    CreateFileRequest,
    CreateFileRequestBody,
    CreateImageRequest,
    CreateImageRequestBody,
    CreateMessageRequest,
    CreateMessageRequestBody,
    GetMessageRequest,
    PatchMessageRequest,
    PatchMessageRequestBody,
    ReplyMessageRequest,
    ReplyMessageRequestBody,
    UpdateMessageRequest,
    UpdateMessageRequestBody,
)
from lark_oapi.event.callback.model.p2_card_action_trigger import (
    P2CardActionTrigger,
    P2CardActionTriggerResponse,
)

INFO = json.loads(sys.argv[1])
CARD = {"config": {"update_multi": True}, "elements": [{"tag": "markdown", "content": "v1"}]}
CARD2 = {"config": {"update_multi": True}, "elements": [{"tag": "markdown", "content": "v2"}]}
POST = {"zh_cn": {"title": "t", "content": [[{"tag": "text", "text": "a post"}]]}}
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
lock = threading.Lock()

client = (
    lark.Client.builder()
    .app_id(INFO["app_id"])
    .app_secret(INFO["app_secret"])
    .domain(INFO["domain"])
    .log_level(lark.LogLevel.ERROR)
    .build()
)


def report(step, ok, detail=None):
    with lock:
        print(json.dumps({"step": step, "ok": ok, "detail": detail}), flush=True)


def checked(step, response):
    """The answer's data (None if it failed; PATCH and PUT answer none)."""
    ok = response.success()
    report(step, ok, None if ok else f"code={response.code} msg={response.msg}")
    return getattr(response, "data", None) if ok else None


def reply(message_id, msg_type, content, step):
    body = ReplyMessageRequestBody.builder().msg_type(msg_type).content(json.dumps(content))
    request = ReplyMessageRequest.builder().message_id(message_id).request_body(body.build())
    return checked(step, client.im.v1.message.reply(request.build()))


def upload_then_reply(message_id, kind, create, body):
    """Upload with the SDK's ``create`` call, then reply with the key it answered."""
    request = {"image": CreateImageRequest, "file": CreateFileRequest}[kind].builder()
    uploaded = checked(f"upload_{kind}", create(request.request_body(body.build()).build()))
    if uploaded is not None:
        key = f"{kind}_key"
        reply(message_id, kind, {key: getattr(uploaded, key)}, f"reply_{kind}")


def on_message(data):
    message = data.event.message
    text = json.loads(message.content).get("text", "")
    sent = reply(message.message_id, "text", {"text": "echo: " + text}, "reply_text")
    if text != "everything":
        return
    if sent is not None:
        edit = UpdateMessageRequestBody.builder().msg_type("text")
        edit = edit.content(json.dumps({"text": "echo, edited"})).build()
        request = UpdateMessageRequest.builder().message_id(sent.message_id).request_body(edit)
        checked("edit_text", client.im.v1.message.update(request.build()))
    reply(message.message_id, "post", POST, "reply_post")
    card = reply(message.message_id, "interactive", CARD, "reply_card")
    if card is not None:
        patch = PatchMessageRequestBody.builder().content(json.dumps(CARD2)).build()
        request = PatchMessageRequest.builder().message_id(card.message_id).request_body(patch)
        checked("patch_card", client.im.v1.message.patch(request.build()))
        got = checked(
            "get_message",
            client.im.v1.message.get(
                GetMessageRequest.builder().message_id(card.message_id).build()
            ),
        )
        if got is not None:
            shown = json.loads(got.items[0].body.content)
            report("get_shows_patch", shown == CARD2, shown)
    image_body = CreateImageRequestBody.builder().image_type("message").image(io.BytesIO(PICTURE))
    upload_then_reply(message.message_id, "image", client.im.v1.image.create, image_body)
    file_body = (
        CreateFileRequestBody.builder()
        .file_type("stream")
        .file_name("notes.txt")
        .file(io.BytesIO(b"some notes\n"))
    )
    upload_then_reply(message.message_id, "file", client.im.v1.file.create, file_body)
    first = (
        CreateMessageRequestBody.builder()
        .receive_id(message.chat_id)
        .msg_type("text")
        .content(json.dumps({"text": "sent first"}))
        .build()
    )
    request = CreateMessageRequest.builder().receive_id_type("chat_id").request_body(first)
    checked("send_first", client.im.v1.message.create(request.build()))
    report("done", True)


def on_card_action(data: P2CardActionTrigger) -> P2CardActionTriggerResponse:
    report("card_action", True, data.event.action.value)
    return P2CardActionTriggerResponse(
        {"toast": {"type": "success", "content": "saved"}, "card": {"type": "raw", "data": CARD2}}
    )


handler = (
    lark.EventDispatcherHandler.builder("", "")
    .register_p2_im_message_receive_v1(on_message)
    .register_p2_card_action_trigger(on_card_action)
    .build()
)
report("started", True)
lark.ws.Client(
    INFO["app_id"],
    INFO["app_secret"],
    event_handler=handler,
    domain=INFO["domain"],
    log_level=lark.LogLevel.ERROR,
).start()
