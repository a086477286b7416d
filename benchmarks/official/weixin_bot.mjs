// A bot written with Tencent's iLink client code (the OpenClaw Weixin plugin's API, CDN and
// send modules, npm @tencent-weixin/openclaw-weixin), as that plugin uses them.
// Run by benchmarks/official_clients.py:
//   OFFICIAL_NODE_MODULES=DIR node --import ./openclaw_stub.mjs weixin_bot.mjs '<JSON line>'
// where DIR is a node_modules holding the plugin. It long-polls, shows typing, answers each
// text, and for "media" uploads and sends an image and a file; one JSON line per call.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";

const root = pathToFileURL(
  path.join(process.env.OFFICIAL_NODE_MODULES, "@tencent-weixin/openclaw-weixin/dist/src"),
).href;
const api = await import(`${root}/api/api.js`);
const upload = await import(`${root}/cdn/upload.js`);
const send = await import(`${root}/messaging/send.js`);

const info = JSON.parse(process.argv[2]);
const opts = { baseUrl: info.base_url, token: info.token };
const report = (step, ok, detail) => console.log(JSON.stringify({ step, ok, detail }));

async function step(name, fn) {
  try {
    const result = await fn();
    report(name, true);
    return result;
  } catch (err) {
    report(name, false, String((err && err.message) || err));
    return undefined;
  }
}

async function answer(msg) {
  const user = msg.from_user_id;
  const withContext = { ...opts, contextToken: msg.context_token };
  const text = msg.item_list?.[0]?.text_item?.text ?? "";
  const config = await step("getconfig", () =>
    api.getConfig({ ...opts, ilinkUserId: user, contextToken: msg.context_token }),
  );
  const ticket = config?.typing_ticket;
  await step("typing", () =>
    api.sendTyping({ ...opts, body: { ilink_user_id: user, typing_ticket: ticket, status: 1 } }),
  );
  await step("send_text", () => send.sendMessageWeixin({ to: user, text: "echo: " + text, opts: withContext }));
  if (text === "media") {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weixin-bot-"));
    const picture = path.join(dir, "p.png");
    fs.writeFileSync(picture, Buffer.concat([Buffer.from("89504e470d0a1a0a", "hex"), Buffer.alloc(5000, 3)]));
    const image = await step("upload_image", () =>
      upload.uploadFileToWeixin({ filePath: picture, toUserId: user, opts, cdnBaseUrl: info.cdn_base_url }),
    );
    if (image) {
      await step("send_image", () => send.sendImageMessageWeixin({ to: user, text: "", uploaded: image, opts: withContext }));
    }
    const notes = path.join(dir, "notes.txt");
    fs.writeFileSync(notes, "some notes\n");
    const file = await step("upload_file", () =>
      upload.uploadFileAttachmentToWeixin({ filePath: notes, toUserId: user, opts, cdnBaseUrl: info.cdn_base_url }),
    );
    if (file) {
      await step("send_file", () =>
        send.sendFileMessageWeixin({ to: user, text: "", fileName: "notes.txt", uploaded: file, opts: withContext }),
      );
    }
  }
  await step("typing_cancel", () =>
    api.sendTyping({ ...opts, body: { ilink_user_id: user, typing_ticket: ticket, status: 2 } }),
  );
  report("done:" + text, true);
  return text;
}

await step("notifystart", () => api.notifyStart(opts));
let buf = "";
for (;;) {
  const page = await api.getUpdates({ ...opts, get_updates_buf: buf, timeoutMs: 10000 });
  if (page.get_updates_buf) buf = page.get_updates_buf;
  let stop = false;
  for (const msg of page.msgs ?? []) {
    if ((await answer(msg)) === "stop") stop = true;
  }
  if (stop) break;
}
await step("notifystop", () => api.notifyStop(opts));
