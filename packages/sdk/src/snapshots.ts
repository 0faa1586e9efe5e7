import { ApiClient, type RequestOptions } from "./client.js";
import type { ConnectionOptions } from "./env.js";

export interface SnapshotInfo {
  snapshotId: string;
  /** The sandbox it was taken from. */
  sandboxId: string;
  createdAt: string;
}

/** This key's snapshots (from `sandbox.snapshot()`, and those fork takes of a running sandbox). */
export async function listSnapshots(options: ConnectionOptions & RequestOptions = {}): Promise<SnapshotInfo[]> {
  const client = new ApiClient(options);
  const { snapshots } = await client.request<{ snapshots: SnapshotInfo[] }>("GET", "/v1/snapshots", { signal: options.signal });
  return snapshots;
}

/** Frees a snapshot's disk. Refused (ConflictError) while sandboxes or other snapshots still build on it. */
export async function deleteSnapshot(snapshotId: string, options: ConnectionOptions & RequestOptions = {}): Promise<void> {
  const client = new ApiClient(options);
  await client.request<void>("DELETE", `/v1/snapshots/${encodeURIComponent(snapshotId)}`, { signal: options.signal });
}
