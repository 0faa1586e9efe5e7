/**
 * Where a redirected TCP connection was going: the host's nftables rules rewrite every sandbox connection's
 * destination to the proxy, and the kernel remembers the original (SO_ORIGINAL_DST). Node cannot ask for it, so a
 * tiny addon does (packages/engine/native/original-destination.c), compiled with gcc on first use and cached by the
 * digest of its source. See docs/decisions/0009-network.md.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, rename } from "node:fs/promises";
import type { Socket } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { dataDir } from "../config.js";
import { runTool } from "../util/run-tool.js";

const SOURCE = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "native", "original-destination.c");

interface Addon {
  originalDestination(fd: number): { address: string; port: number };
}

let loaded: Promise<Addon> | undefined;

/** Builds (once per source version) and loads the addon. */
export function loadOriginalDestination(): Promise<Addon> {
  loaded ??= (async () => {
    const source = readFileSync(SOURCE);
    const digest = createHash("sha256").update(source).digest("hex").slice(0, 16);
    const out = join(dataDir(), "native", `original-destination-${digest}.node`);
    if (!existsSync(out)) {
      await mkdir(dirname(out), { recursive: true });
      const partial = `${out}.${process.pid}.tmp`;
      await runTool("gcc", ["-shared", "-fPIC", "-O2", "-Wall", "-o", partial, SOURCE]);
      await rename(partial, out);
    }
    const module = { exports: {} as Addon };
    process.dlopen(module, out);
    return module.exports;
  })();
  loaded.catch(() => (loaded = undefined));
  return loaded;
}

/** The file descriptor of an accepted TCP socket (Node keeps it on the socket's native handle). */
function socketFd(socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) throw new Error("the socket has no file descriptor");
  return fd;
}

/** The destination `socket`'s connection had before it was redirected to us. */
export function originalDestination(addon: Addon, socket: Socket): { address: string; port: number } {
  return addon.originalDestination(socketFd(socket));
}
