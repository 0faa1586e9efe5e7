import { appendFileSync, closeSync, ftruncateSync, openSync, readSync, statSync } from "node:fs";
import { readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";

/**
 * A guest writes to its serial console as fast as it likes, and QEMU appends all of it to the VM's console.log on
 * the host. This keeps each such file near a bounded size: the file is opened by QEMU with O_APPEND
 * (machine.ts: `append=on`), so every second the host cuts files past CONSOLE_LOG_MAX_BYTES down to their last
 * CONSOLE_LOG_KEEP_BYTES in place (QEMU's next write lands after them). Between two checks a file can overshoot by
 * what the emulated UART carries in a second (well under 1 MiB).
 */
export const CONSOLE_LOG_MAX_BYTES = consoleLogMaxBytes();
export const CONSOLE_LOG_KEEP_BYTES = Math.floor(CONSOLE_LOG_MAX_BYTES / 4);
const CHECK_EVERY_MS = 1000;
/** Console logs of failed VMs kept under logs/ (the newest). */
const KEPT_FAILED_LOGS = 50;

/** 1 MiB unless CODECOURIER_CONSOLE_LOG_MAX_BYTES says otherwise (at least 4 KiB). */
function consoleLogMaxBytes(): number {
  const text = process.env.CODECOURIER_CONSOLE_LOG_MAX_BYTES;
  if (text === undefined) return 1024 * 1024;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 4096) throw new Error(`CODECOURIER_CONSOLE_LOG_MAX_BYTES must be a whole number of at least 4096, got ${text}`);
  return value;
}

const watched = new Set<string>();
let timer: NodeJS.Timeout | undefined;

/** Starts bounding this console log; idempotent. */
export function boundConsoleLog(path: string): void {
  watched.add(path);
  timer ??= setInterval(trimAll, CHECK_EVERY_MS);
  timer.unref();
}

/** Stops bounding it (the VM ended). */
export function releaseConsoleLog(path: string): void {
  watched.delete(path);
  if (watched.size === 0 && timer) {
    clearInterval(timer);
    timer = undefined;
  }
}

function trimAll(): void {
  for (const path of watched) {
    try {
      trimConsoleLog(path);
    } catch {
      // The file is gone (the VM's run dir was just removed) or unreadable: nothing to bound.
    }
  }
}

/** Cuts the file down to its last CONSOLE_LOG_KEEP_BYTES if it is over CONSOLE_LOG_MAX_BYTES. */
export function trimConsoleLog(path: string, maxBytes = CONSOLE_LOG_MAX_BYTES, keepBytes = CONSOLE_LOG_KEEP_BYTES): boolean {
  const size = statSync(path).size;
  if (size <= maxBytes) return false;
  const fd = openSync(path, "r+");
  const tail = Buffer.alloc(keepBytes);
  let read: number;
  try {
    read = readSync(fd, tail, 0, keepBytes, size - keepBytes);
    ftruncateSync(fd, 0);
  } finally {
    closeSync(fd);
  }
  // Appended, as QEMU's own writes are: one of them landing right after the truncation is not overwritten.
  appendFileSync(path, Buffer.concat([Buffer.from(`[console log cut: ${size - read} earlier bytes dropped]\n`), tail.subarray(0, read)]));
  return true;
}

/** Removes all but the newest KEPT_FAILED_LOGS console logs of failed VMs. */
export async function pruneKeptConsoleLogs(dir: string): Promise<void> {
  const names = (await readdir(dir).catch(() => [] as string[])).filter((name) => name.endsWith("-console.log"));
  if (names.length <= KEPT_FAILED_LOGS) return;
  const dated = await Promise.all(names.map(async (name) => ({ name, mtime: (await stat(join(dir, name)).catch(() => undefined))?.mtimeMs ?? 0 })));
  dated.sort((a, b) => b.mtime - a.mtime);
  for (const { name } of dated.slice(KEPT_FAILED_LOGS)) await rm(join(dir, name), { force: true });
}
