import { createWriteStream } from "node:fs";
import { rm } from "node:fs/promises";
import { createServer } from "node:net";
import type { QmpClient } from "./qmp.js";

/**
 * QEMU migration used as save/restore. QEMU 7.2 with spawn=deny can neither run `exec:` URIs nor take a file:
 * the state goes through a Unix socket (out) or an inherited descriptor (in). See docs/decisions/0004.
 */

export class MigrationError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "MigrationError";
  }
}

interface MigrationInfo {
  status?: string;
  "error-desc"?: string;
  ram?: { transferred?: number; total?: number };
}

async function setIgnoreShared(qmp: QmpClient, on: boolean): Promise<void> {
  await qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: on }] });
}

/** Polls query-migrate until the migration completed; throws on failure or at the deadline. */
export async function waitForMigration(qmp: QmpClient, deadline: number, what: string): Promise<MigrationInfo> {
  for (;;) {
    // While it sends the last pages with the vCPUs stopped, QEMU's migration thread holds the big lock and QMP
    // answers only afterwards: seconds for a large guest. So a query may take as long as the migration may.
    const info = await qmp.execute<MigrationInfo>("query-migrate", undefined, Math.max(10_000, deadline - Date.now()));
    if (info.status === "completed") return info;
    if (info.status === "failed" || info.status === "cancelled") {
      throw new MigrationError(`${what} ${info.status}: ${info["error-desc"] ?? "QEMU gave no reason"}`);
    }
    if (Date.now() > deadline) throw new MigrationError(`${what} did not complete in time (status ${info.status ?? "none"})`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * Loads a device state saved by {@link saveDeviceState} into a QEMU started with `-incoming defer` that inherited the
 * state file as descriptor `fd`. RAM is not in the stream: it is the memory file the QEMU maps.
 */
export async function loadDeviceState(qmp: QmpClient, fd: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  await setIgnoreShared(qmp, true);
  await qmp.execute("migrate-incoming", { uri: `fd:${fd}` });
  await waitForMigration(qmp, deadline, "loading the device state");
}

/**
 * Saves the device state of a stopped VM whose RAM is a shared memory file (x-ignore-shared: the RAM stays in its
 * file and is not copied). Takes a few milliseconds and ~70 KB.
 */
export function saveDeviceState(qmp: QmpClient, file: string, socketPath: string, timeoutMs: number): Promise<void> {
  return saveMigrationStream(qmp, file, socketPath, timeoutMs, { includeSharedRam: false });
}

/**
 * Writes a stopped VM's migration stream to `file` through a Unix socket this process listens on. With
 * `includeSharedRam` the stream carries all RAM (a full-state file, as a plain `-incoming` restore needs);
 * without, RAM in shared memory files is left out.
 */
export async function saveMigrationStream(
  qmp: QmpClient,
  file: string,
  socketPath: string,
  timeoutMs: number,
  options: { includeSharedRam: boolean },
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  await setIgnoreShared(qmp, !options.includeSharedRam);
  if (options.includeSharedRam) await unthrottle(qmp);
  await rm(socketPath, { force: true });
  const out = createWriteStream(file, { mode: 0o600 });
  const written = new Promise<void>((resolve, reject) => {
    out.on("finish", resolve);
    out.on("error", reject);
  });
  written.catch(() => {});
  const server = createServer((socket) => {
    server.close(); // one connection only: QEMU's
    socket.pipe(out);
    socket.on("error", (error) => out.destroy(error));
  });
  try {
    await new Promise<void>((resolve, reject) => {
      // on, not once: a failed accept() later (EMFILE) is emitted here too, and after a first one an 'error' without
      // a listener would end the server; rejecting a settled promise does nothing.
      server.on("error", reject);
      server.listen(socketPath, resolve);
    });
    await qmp.execute("migrate", { uri: `unix:${socketPath}` });
    await waitForMigration(qmp, deadline, "saving the VM state");
    await Promise.race([
      written,
      new Promise((_, reject) => setTimeout(() => reject(new MigrationError("state file was not closed")), Math.max(1, deadline - Date.now()))),
    ]);
  } finally {
    server.close();
    out.destroy();
    await rm(socketPath, { force: true });
  }
}

/** A stopped VM has no downtime to protect: no bandwidth cap, one pass. */
async function unthrottle(qmp: QmpClient): Promise<void> {
  await qmp.execute("migrate-set-parameters", { "max-bandwidth": 0x7fffffffffff, "downtime-limit": 100_000 });
}

/**
 * Copies the whole RAM and device state of a stopped `source` VM into `destination`, a QEMU started with
 * `-incoming defer` whose RAM is a shared memory file: afterwards that file holds the source's RAM. Used to turn
 * a clone's private memory into a snapshot's memory file.
 */
export async function transferToReceiver(
  source: QmpClient,
  destination: QmpClient,
  socketPath: string,
  timeoutMs: number,
): Promise<MigrationInfo> {
  const deadline = Date.now() + timeoutMs;
  await rm(socketPath, { force: true });
  await setIgnoreShared(destination, false);
  await destination.execute("migrate-incoming", { uri: `unix:${socketPath}` });
  // Stopped source: one pass, no dirty-page iterations; a restored clone still has x-ignore-shared set from its own
  // restore, but its RAM is private and must be sent.
  await setIgnoreShared(source, false);
  await unthrottle(source);
  await source.execute("migrate", { uri: `unix:${socketPath}` });
  const info = await waitForMigration(source, deadline, "copying RAM to the snapshot");
  await waitForMigration(destination, deadline, "receiving RAM into the snapshot");
  await rm(socketPath, { force: true });
  return info;
}
