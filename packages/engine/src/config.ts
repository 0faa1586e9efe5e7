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

/** A duration in ms from the environment: `name` if set (a whole number, at least `min`), else `defaultMs`. */
function durationFromEnv(name: string, defaultMs: number, min = 1): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return defaultMs;
  const ms = Number(raw);
  if (!Number.isSafeInteger(ms) || ms < min) throw new Error(`${name} must be a whole number of milliseconds (at least ${min}), got "${raw}"`);
  return ms;
}

/**
 * How long a request body may send nothing before the server gives up on it (408): a trickled body would
 * otherwise pin a guest write or an upload chunk's lock. CODECOURIER_BODY_IDLE_TIMEOUT_MS, default 30 s.
 */
export function bodyIdleTimeoutMs(): number {
  return durationFromEnv("CODECOURIER_BODY_IDLE_TIMEOUT_MS", 30_000, 100);
}

/**
 * How long after a tenant's last valid key was revoked its sandboxes are stopped (paused, or killed where pausing
 * fails): time for an operator who revoked by mistake to issue a new key. CODECOURIER_REVOKED_TENANT_GRACE_MS,
 * default 10 min.
 */
export function revokedTenantGraceMs(): number {
  return durationFromEnv("CODECOURIER_REVOKED_TENANT_GRACE_MS", 10 * 60_000, 0);
}

/**
 * How long the control plane keeps an ended sandbox's records (owner, network settings) before pruning them:
 * `GET /v1/sandboxes/ID` answers "sandbox_gone" meanwhile, "not_found" after. CODECOURIER_ENDED_SANDBOX_RETENTION_MS,
 * default 7 days.
 */
export function endedSandboxRetentionMs(): number {
  return durationFromEnv("CODECOURIER_ENDED_SANDBOX_RETENTION_MS", 7 * 24 * 60 * 60_000, 0);
}

/** How often the server looks for revoked keys with open streams, ended sandboxes and revoked tenants. */
export function housekeepingIntervalMs(): number {
  return durationFromEnv("CODECOURIER_HOUSEKEEPING_INTERVAL_MS", 2_000, 50);
}

/** Where the first start writes the admin key when stderr is not a terminal (the data dir, mode 0600). */
export const ADMIN_KEY_FILE = "admin-key";
