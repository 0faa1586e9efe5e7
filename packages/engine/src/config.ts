import { homedir } from "node:os";
import { join } from "node:path";

/** Where CodeCourier keeps images, VM runtime directories and state. */
export function dataDir(): string {
  return process.env.CODECOURIER_HOME ?? join(homedir(), ".codecourier");
}

/** Port of the local API server. */
export function serverPort(): number {
  const raw = process.env.CODECOURIER_PORT ?? "7070";
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`CODECOURIER_PORT must be a TCP port number, got "${raw}"`);
  }
  return port;
}

export const ENGINE_VERSION = "0.1.0";
