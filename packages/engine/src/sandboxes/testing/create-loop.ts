// Test helper: creates sandboxes from a template in a loop, printing "created <id>" after each, until killed.
// The restart-safety test kills this process with SIGKILL in the middle of a create.
import { ensureGuestImage } from "../../images/guest-image.js";
import { SandboxEngine } from "../sandbox-engine.js";

const templateId = process.argv[2];
if (!templateId) throw new Error("usage: create-loop <template-id>");
const engine = await SandboxEngine.open({ image: await ensureGuestImage(() => {}) });
for (;;) {
  const sandbox = await engine.create(templateId);
  process.stdout.write(`created ${sandbox.id}\n`);
}
