import { resolveUrl, type ConnectionOptions } from "./env.js";
import { CodeCourierError } from "./errors.js";

/** Kept for the first SDK's callers; health() needs only the URL. */
export type ClientOptions = ConnectionOptions;

export interface ServerHealth {
  ok: boolean;
  version: string;
  /** The accelerator this host runs VMs with. */
  accel: "kvm" | "tcg";
  accelReason: string;
  region: string;
  image: { id: string; kernel: string };
}

/** GET /health of the server. Needs no API key, so it can check a URL before any key exists. */
export async function health(options: ClientOptions = {}): Promise<ServerHealth> {
  const url = `${resolveUrl(options)}/health`;
  let response: Response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new CodeCourierError(`cannot reach the CodeCourier server at ${url}: ${(error as Error).message}`, {
      code: "unavailable",
      cause: error,
    });
  }
  if (!response.ok) throw new CodeCourierError(`health check failed with HTTP ${response.status}`, { status: response.status });
  return (await response.json()) as ServerHealth;
}
