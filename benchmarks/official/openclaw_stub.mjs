// Loaded with `node --import ./openclaw_stub.mjs`: Tencent's iLink client (the OpenClaw Weixin
// plugin) imports three helpers from the OpenClaw host, which needs a newer Node than the
// client itself. Only the client's API, CDN and send modules are used here, so these
// stand-ins are enough: account ids as given, temporary files under the OS's temp dir, no
// file locks (one process).
import { register } from "node:module";

const STUB = `
import os from "node:os";
export const normalizeAccountId = (id) => String(id ?? "default");
export const resolvePreferredOpenClawTmpDir = () => os.tmpdir();
export const withFileLock = async (_path, _options, fn) => fn();
`;

register(
  "data:text/javascript," +
    encodeURIComponent(`
export async function resolve(specifier, context, next) {
  if (specifier.startsWith("openclaw/plugin-sdk/")) {
    return { url: "data:text/javascript," + encodeURIComponent(${JSON.stringify(STUB)}), shortCircuit: true };
  }
  return next(specifier, context);
}
`),
);
