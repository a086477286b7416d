// A bot written with @wecom/aibot-node-sdk, WeCom's official Node SDK, as its users write one.
// Run by benchmarks/official_clients.py: node wecom_bot.cjs '<emulate wecom JSON line>', with
// NODE_PATH pointing at a node_modules that has the SDK. Each user text names a feature; the
// bot answers with the SDK's call for it and prints one JSON line per call.
const { WSClient } = require("@wecom/aibot-node-sdk");

const info = JSON.parse(process.argv[2]);
const CARD = {
  card_type: "text_notice",
  main_title: { title: "Build", desc: "green" },
  card_action: { type: 1, url: "https://example.invalid/" },
  task_id: "task-1",
};
const CARD2 = { ...CARD, main_title: { title: "Build", desc: "done" } };
const PICTURE = Buffer.concat([Buffer.from("\x89PNG\r\n\x1a\n", "latin1"), Buffer.alloc(700 * 1024, 7)]);
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const report = (step, ok, detail) => console.log(JSON.stringify({ step, ok, detail }));

const client = new WSClient({
  botId: info.bot_id,
  secret: info.secret,
  wsUrl: info.ws_url,
  logger: quiet,
  maxReconnectAttempts: 3,
});

async function step(name, fn) {
  try {
    const ack = await fn();
    const errcode = ack && ack.errcode;
    report(name, !errcode, errcode ? `errcode ${errcode} ${ack.errmsg}` : ack && ack.body);
    return ack;
  } catch (err) {
    report(name, false, String((err && err.message) || err));
    return undefined;
  }
}

client.on("authenticated", () => report("authenticated", true));
client.on("message.text", async (frame) => {
  const text = frame.body.text.content;
  const user = frame.body.from.userid;
  if (text === "stream") {
    await step("stream_frame", () => client.replyStream(frame, "s-1", "hello", false));
    await step("stream_finish", () => client.replyStream(frame, "s-1", "hello world", true));
  } else if (text === "card") {
    await step("reply_card", () => client.replyTemplateCard(frame, CARD));
  } else if (text === "streamcard") {
    await step("stream_with_card", () =>
      client.replyStreamWithCard(frame, "s-2", "with a card", true, { templateCard: CARD }),
    );
  } else if (text === "media") {
    const uploaded = await step("upload_image", async () => {
      const result = await client.uploadMedia(PICTURE, { type: "image", filename: "p.png" });
      return { errcode: 0, body: result };
    });
    if (uploaded) {
      await step("reply_media", () => client.replyMedia(frame, "image", uploaded.body.media_id));
    }
  } else if (text === "send") {
    await step("send_markdown", () =>
      client.sendMessage(user, { msgtype: "markdown", markdown: { content: "pushed" } }),
    );
    await step("send_card", () =>
      client.sendMessage(user, { msgtype: "template_card", template_card: CARD }),
    );
    const uploaded = await step("upload_file", async () => {
      const result = await client.uploadMedia(Buffer.from("notes\n"), { type: "file", filename: "n.txt" });
      return { errcode: 0, body: result };
    });
    if (uploaded) {
      await step("send_media", () => client.sendMediaMessage(user, "file", uploaded.body.media_id));
    }
    // the callback itself is answered too, or it would stay in flight
    await step("stream_finish", () => client.replyStream(frame, "s-3", "sent", true));
  }
  report("done:" + text, true);
});
client.on("event.enter_chat", async (frame) => {
  await step("welcome_card", () =>
    client.replyWelcome(frame, { msgtype: "template_card", template_card: CARD }),
  );
});
client.on("event.template_card_event", async (frame) => {
  await step("update_card", () => client.updateTemplateCard(frame, CARD2, [frame.body.from.userid]));
});
client.connect();
