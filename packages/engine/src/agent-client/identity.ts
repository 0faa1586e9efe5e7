import { randomBytes } from "node:crypto";
import type { IdentityRequest } from "@codecourier/protocol";

/** Entropy sent per refresh: twice what the kernel needs to consider its CRNG fully seeded (256 bits). */
const entropyBytes = 64;

/**
 * A fresh identity for a VM restored from a memory snapshot: the host's clock now, entropy from the host's
 * CSPRNG and, unless given, a new random machine id.
 */
export function createIdentityRequest(options: { hostname: string; machineId?: string; epochMs?: number }): IdentityRequest {
  return {
    epochMs: options.epochMs ?? Date.now(),
    entropy: randomBytes(entropyBytes).toString("base64"),
    hostname: options.hostname,
    machineId: options.machineId ?? randomBytes(16).toString("hex"),
  };
}
