/** `npm start`: the CodeCourier server on its embedded defaults (SQLite and local disk under CODECOURIER_HOME). */
import { dataDir, serverPort } from "../config.js";
import { ControlStore, controlDatabasePath } from "../control/control-store.js";
import { SandboxService } from "../control/sandbox-service.js";
import { ensureGuestImage } from "../images/guest-image.js";
import { SandboxEngine } from "../sandboxes/sandbox-engine.js";
import { chooseAccelerator } from "../vmm/accel.js";
import { hostCgroups } from "../vmm/cgroups/host-cgroups.js";
import { buildApp } from "./app.js";
import { NetworkService } from "../network/network-service.js";
import type { TemplateCatalogOptions } from "../control/template-catalog.js";

/**
 * Sandbox networking needs root (namespaces, nftables). Without it the server still runs, with sandboxes that have
 * no network at all, and says why; CODECOURIER_NETWORK=off chooses that on purpose.
 */
async function openNetwork(store: ControlStore): Promise<{ network?: NetworkService; networkUnavailable?: string }> {
  if (process.env.CODECOURIER_NETWORK === "off") return { networkUnavailable: "turned off (CODECOURIER_NETWORK=off)" };
  if (process.getuid?.() !== 0) return { networkUnavailable: "the server is not running as root (namespaces and nftables need it)" };
  try {
    return { network: await NetworkService.open({ dataDir: dataDir(), store }) };
  } catch (error) {
    return { networkUnavailable: `setting it up failed: ${error instanceof Error ? error.message : String(error)}` };
  }
}

const log = (line: string) => process.stderr.write(`${line}\n`);

/** Operators tune how many template shapes keep warm pools, and when idle ones stop (env, in ms). */
function templateCatalogOptions(): TemplateCatalogOptions {
  return {
    maxPooledShapes: envWholeNumber("CODECOURIER_POOLED_SHAPES"),
    poolIdleMs: envWholeNumber("CODECOURIER_POOL_IDLE_MS"),
    templateIdleMs: envWholeNumber("CODECOURIER_TEMPLATE_IDLE_MS"),
  };
}

function envWholeNumber(name: string): number | undefined {
  const text = process.env[name];
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name} must be a whole number, got ${text}`);
  return value;
}
const region = process.env.CODECOURIER_REGION ?? "local";
const poolSize = Number(process.env.CODECOURIER_POOL_SIZE ?? "1");
if (!Number.isInteger(poolSize) || poolSize < 0 || poolSize > 64) throw new Error(`CODECOURIER_POOL_SIZE must be 0..64, got ${process.env.CODECOURIER_POOL_SIZE}`);

const image = await ensureGuestImage((line) => log(`images: ${line}`));
const accel = await chooseAccelerator(image);
const store = await ControlStore.openSqlite(controlDatabasePath());
const { network, networkUnavailable } = await openNetwork(store);
const engine = await SandboxEngine.open({ image, accel: accel.accel, poolSize, network: network?.hooks });
await network?.restore(new Set(engine.listSandboxes().filter((s) => s.state === "running" || s.state === "paused").map((s) => s.id)));
const sandboxes = new SandboxService(engine, store, {
  region,
  network,
  templates: templateCatalogOptions(),
  maintenanceMs: envWholeNumber("CODECOURIER_MAINTENANCE_MS"),
});
const app = buildApp({ accel, image, region, store, sandboxes, network, networkUnavailable, logError: log });
const port = serverPort();
await app.listen({ host: "127.0.0.1", port });
// Fastify listens for 'error' only while starting; a failed accept() later (EMFILE) is emitted here and would end the
// process. libuv has already dropped that one connection and keeps listening, so there is nothing else to do.
app.server.on("error", () => {});
log(`CodeCourier listening on http://127.0.0.1:${port} (accelerator: ${accel.accel} — ${accel.reason}; region ${region}; data: ${dataDir()})`);
log(`VM resource limits: ${hostCgroups().summary}`);
log(network ? `sandbox networking: default-deny egress through the proxy (pool ${network.host.pool}; new connections refused past ${network.budget.fdBudget} open descriptors)` : `sandbox networking OFF: ${networkUnavailable}`);

if ((await store.tenantCount()) === 0) {
  // Shown once: only its hash is stored. More keys: `codecourier keys create --tenant NAME`.
  const admin = await store.createKey("admin");
  log(`first start: API key for tenant "admin" (shown once, keep it): ${admin.apiKey}`);
}

// The default template shape is made now, so that the first create does not wait for a cold boot.
void sandboxes.templates.snapshotFor("base", 1, 1, 512).then(
  () => log("template base (1 vCPU, 512 MB) ready"),
  (error: unknown) => log(`template base could not be made: ${String(error)}`),
);

let closing = false;
const shutdown = () => {
  if (closing) return;
  closing = true;
  sandboxes.close();
  void app
    .close()
    .then(() => engine.close())
    .then(() => network?.close({ sandboxesStopped: true }))
    .then(() => store.close())
    .catch((error: unknown) => log(`shutdown: ${String(error)}`))
    .finally(() => process.exit(0));
};
process.once("SIGINT", shutdown);
process.once("SIGTERM", shutdown);
