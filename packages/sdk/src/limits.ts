import type { ApiLimitsAnswer } from "@codecourier/protocol/api";
import { ApiClient, type RequestOptions } from "./client.js";
import type { ConnectionOptions } from "./env.js";

/** This key's tenant: its limits, what it uses of them now, the per-sandbox bounds and the VM shapes offered. */
export type TenantLimits = ApiLimitsAnswer;

export async function getLimits(options: ConnectionOptions & RequestOptions = {}): Promise<TenantLimits> {
  return new ApiClient(options).request<TenantLimits>("GET", "/v1/limits", { signal: options.signal });
}
