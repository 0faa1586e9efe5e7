/** `npm start`: the CodeCourier server on its embedded defaults (SQLite and local disk under CODECOURIER_HOME). */
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ADMIN_KEY_FILE, dataDir, endedSandboxRetentionMs, housekeepingIntervalMs, revokedTenantGraceMs, serverPort } from "../config.js";
import { SandboxHousekeeping } from "../control/sandbox-housekeeping.js";
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, restrictUmask, secureDataDir, withGuestImageUmask } from "../state/data-dir-permissions.js";
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

// First: everything this process and its children (QEMU) create in the data dir is this user's only.
restrictUmask();
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
// Read now, so that a bad setting stops the start before anything runs.
const housekeepingSettings = { endedRetentionMs: endedSandboxRetentionMs(), revokedTenantGraceMs: revokedTenantGraceMs(), intervalMs: housekeepingIntervalMs() };

// Guest images keep their files' modes inside the guest, so they are built under the usual umask (nothing else
// runs yet). They hold no tenant data.
mkdirSync(dataDir(), { recursive: true, mode: PRIVATE_DIR_MODE }); // before the images, which would make it 0755
const image = await withGuestImageUmask(() => ensureGuestImage((line) => log(`images: ${line}`)));
const permissions = secureDataDir(dataDir());
if (permissions.fixed.length > 0) log(`WARNING: the data dir was readable by other users; made private (0700 dirs, 0600 files): ${permissions.fixed.join("; ")}`);
for (const problem of permissions.problems) log(`WARNING: data dir not private: ${problem}`);
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
  // Shown once: only its hash is stored. More keys: `codecourier keys create --tenant NAME`. On a terminal it is
  // printed; a log file or pipe (kept, shipped, read by others) gets where it is instead.
  const admin = await store.createKey("admin");
  if (process.stderr.isTTY) {
    log(`first start: API key for tenant "admin" (shown once, keep it): ${admin.apiKey}`);
  } else {
    const keyFile = join(dataDir(), ADMIN_KEY_FILE);
    rmSync(keyFile, { force: true }); // a leftover (of a data dir whose control.db was removed) would keep its mode
    writeFileSync(keyFile, `${admin.apiKey}\n`, { mode: PRIVATE_FILE_MODE, flag: "wx" });
    log(`first start: the API key for tenant "admin" is in ${keyFile} (mode 0600, only this user); store it and delete the file`);
  }
}

// Records of ended sandboxes are pruned after a retention period; a tenant whose keys are all revoked has its
// sandboxes stopped after a grace period (config.ts).
const housekeeping = new SandboxHousekeeping(engine, sandboxes, store, { ...housekeepingSettings, log });
const housekeepingTimer = setInterval(() => void housekeeping.sweep(), housekeepingSettings.intervalMs);
housekeepingTimer.unref();

// The default template shape is made now, so that the first create does not wait for a cold boot.
void sandboxes.templates.snapshotFor("base", 1, 1, 512).then(
  () => log("template base (1 vCPU, 512 MB) ready"),
  (error: unknown) => log(`template base could not be made: ${String(error)}`),
);

let closing = false;
const shutdown = () => {
  if (closing) return;
  closing = true;
  clearInterval(housekeepingTimer);
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
