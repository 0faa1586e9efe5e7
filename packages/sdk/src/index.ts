/**
 * @codecourier/sdk — the TypeScript client of a CodeCourier server. Runs on Node, Bun and Deno (fetch only).
 * At this stage it covers the server's health endpoint; sandboxes arrive with the API (issue 4).
 */
export interface ClientOptions {
  /** Server URL; default CODECOURIER_URL or http://127.0.0.1:7070. */
  url?: string;
}

export interface ServerHealth {
  ok: boolean;
  version: string;
  /** The accelerator this host runs VMs with. */
  accel: "kvm" | "tcg";
  accelReason: string;
  image: { id: string; kernel: string };
}

export class CodeCourierError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = "CodeCourierError";
  }
}

function resolveUrl(options: ClientOptions): string {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
  return (options.url ?? env?.CODECOURIER_URL ?? "http://127.0.0.1:7070").replace(/\/+$/, "");
}

/** GET /health of the server. */
export async function health(options: ClientOptions = {}): Promise<ServerHealth> {
  const url = `${resolveUrl(options)}/health`;
  let response: Response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new CodeCourierError(`cannot reach the CodeCourier server at ${url}: ${(error as Error).message}`);
  }
  if (!response.ok) throw new CodeCourierError(`health check failed with HTTP ${response.status}`, response.status);
  return (await response.json()) as ServerHealth;
}
