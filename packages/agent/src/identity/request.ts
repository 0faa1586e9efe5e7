import { IDENTITY_LIMITS } from "@codecourier/protocol";
import { badRequest } from "../http/respond.js";

/** A validated identity request, entropy decoded. */
export interface ValidIdentityRequest {
  epochMs: number;
  entropy: Buffer;
  hostname: string;
  machineId: string;
}

const knownKeys = new Set(["epochMs", "entropy", "hostname", "machineId"]);
/** Plausible wall clocks only: a host bug that sends 0 or seconds instead of ms must not set the guest to 1970. */
const minEpochMs = Date.UTC(2000, 0, 1);
const maxEpochMs = Date.UTC(2200, 0, 1);
const maxEntropyBase64Length = Math.ceil(IDENTITY_LIMITS.maxEntropyBytes / 3) * 4;
/** Canonical, padded base64: Buffer.from(…, "base64") would silently skip anything else. */
const base64Pattern = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
/** RFC 1123: labels of letters and digits with inner hyphens, separated by dots. */
const hostnamePattern = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
/** machine-id(5): 32 lowercase hex digits; all zeros is not a valid id. */
const machineIdPattern = /^(?!0{32}$)[0-9a-f]{32}$/;

/** Checks every field before anything is applied, so a bad request changes nothing (400 bad_request). */
export function validateIdentityRequest(raw: unknown): ValidIdentityRequest {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw badRequest("identity request must be a JSON object");
  const fields = raw as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    if (!knownKeys.has(key)) throw badRequest(`unknown identity field: ${key.slice(0, 64)}`);
  }
  const { epochMs, entropy, hostname, machineId } = fields;

  if (typeof epochMs !== "number" || !Number.isSafeInteger(epochMs) || epochMs < minEpochMs || epochMs >= maxEpochMs) {
    throw badRequest("epochMs must be an integer number of milliseconds between the years 2000 and 2200");
  }
  const { minEntropyBytes, maxEntropyBytes, maxHostnameLength } = IDENTITY_LIMITS;
  if (typeof entropy !== "string" || entropy.length > maxEntropyBase64Length || !base64Pattern.test(entropy)) {
    throw badRequest(`entropy must be base64 of ${minEntropyBytes} to ${maxEntropyBytes} bytes`);
  }
  const entropyBytes = Buffer.from(entropy, "base64");
  if (entropyBytes.length < minEntropyBytes || entropyBytes.length > maxEntropyBytes) {
    throw badRequest(`entropy must be base64 of ${minEntropyBytes} to ${maxEntropyBytes} bytes, got ${entropyBytes.length}`);
  }
  if (typeof hostname !== "string" || hostname.length > maxHostnameLength || !hostnamePattern.test(hostname)) {
    throw badRequest(`hostname must be an RFC 1123 name of at most ${maxHostnameLength} characters`);
  }
  if (typeof machineId !== "string" || !machineIdPattern.test(machineId)) {
    throw badRequest("machineId must be 32 lowercase hex digits, not all zero");
  }
  return { epochMs, entropy: entropyBytes, hostname, machineId };
}
