import {
  CreateSandboxRequestSchema,
  ListSandboxesQuerySchema,
  RunCommandRequestSchema,
  type ApiCommandResult,
  type ApiSandbox,
  type ApiSandboxList,
  type ApiSandboxState,
} from "@codecourier/protocol/api";
import type { z } from "zod";
import type { ExecSpec } from "@codecourier/protocol";
import type { RunningSandbox, SandboxEngine } from "../sandboxes/sandbox-engine.js";
import { SandboxNotFoundError } from "../sandboxes/errors.js";
import { ApiError, notFound } from "../server/api-error.js";
import type { ControlStore, SandboxOwnerRow, Tenant } from "./control-store.js";
import { spawnErrorLine } from "./processes.js";
import { TemplateCatalog } from "./template-catalog.js";
import type { NetworkService } from "../network/network-service.js";

export interface SandboxServiceOptions {
  /** The region this host serves; a create naming another is refused. */
  region: string;
  /** How often timed-out sandboxes are looked for. Default 1000 ms. */
  timeoutSweepMs?: number;
  /** Sandbox networking; without it sandboxes have no network and the network routes answer 503. */
  network?: NetworkService;
}

/** Where commands run and relative file paths point unless told otherwise: root's home in the base image. */
export const SANDBOX_WORKDIR = "/root";

/** What a command is, as the API gives it (run-to-completion commands and processes alike). */
export interface CommandFields {
  cmd?: string;
  argv?: string[];
  cwd?: string;
  env?: Record<string, string>;
  user?: string;
  timeoutMs?: number;
}
const DEFAULT_CPUS = 1;
const DEFAULT_MEMORY_MB = 512;
const LIVE_STATES: ApiSandboxState[] = ["running", "unhealthy", "paused"];
/** Rows read from the control database at a time while filtering a list page. */
const LIST_SCAN_BATCH = 500;

/**
 * The API's view of sandboxes: every operation is scoped to the calling tenant (another tenant's sandbox is "not
 * found", never "forbidden", so ids leak nothing), requests are checked against the tenant's limits before
 * anything is created, and sandboxes past their timeout are killed or paused.
 */
export class SandboxService {
  readonly templates: TemplateCatalog;
  readonly #sweeper: NodeJS.Timeout;
  #sweeping = false;

  constructor(
    private readonly engine: SandboxEngine,
    private readonly store: ControlStore,
    private readonly options: SandboxServiceOptions,
  ) {
    this.templates = new TemplateCatalog(engine, store);
    this.#sweeper = setInterval(() => void this.sweepTimeouts(), options.timeoutSweepMs ?? 1000);
    this.#sweeper.unref();
  }

  close(): void {
    clearInterval(this.#sweeper);
  }

  async create(tenant: Tenant, body: unknown): Promise<ApiSandbox> {
    const request = CreateSandboxRequestSchema.parse(body);
    if (request.region !== undefined && request.region !== this.options.region) {
      throw new ApiError("bad_request", `this server serves region ${this.options.region}, not ${request.region}`);
    }
    const { name, version } = TemplateCatalog.resolveName(request.template);
    const cpus = request.cpu ?? DEFAULT_CPUS;
    const memoryMB = request.memoryMB ?? DEFAULT_MEMORY_MB;
    const { limits } = tenant;
    if (cpus > limits.maxCpus) throw new ApiError("quota_exceeded", `cpu ${cpus} is over this tenant's limit of ${limits.maxCpus}`);
    if (memoryMB > limits.maxMemoryMB) {
      throw new ApiError("quota_exceeded", `memoryMB ${memoryMB} is over this tenant's limit of ${limits.maxMemoryMB}`);
    }
    const live = await this.#liveCount(tenant);
    if (live >= limits.maxSandboxes) {
      throw new ApiError("quota_exceeded", `this tenant already has ${live} sandboxes, its limit; kill some first`);
    }

    const snapshotId = await this.templates.snapshotFor(name, version, cpus, memoryMB);
    const sandbox = await this.engine.create(snapshotId);
    const now = Date.now();
    const row: SandboxOwnerRow = {
      sandbox_id: sandbox.id,
      tenant_id: tenant.id,
      template: `${name}@${version}`,
      metadata: JSON.stringify(request.metadata ?? {}),
      env: JSON.stringify(request.env ?? {}),
      region: this.options.region,
      cpus,
      memory_mb: memoryMB,
      created_at: now,
      timeout_at: request.timeoutMs === undefined ? null : now + request.timeoutMs,
      on_timeout: request.onTimeout,
    };
    try {
      await this.options.network?.configure(sandbox.id, request.network ?? TemplateCatalog.networkPolicy(name));
      await this.store.recordSandbox(row);
    } catch (error) {
      // Nothing half-created: a sandbox nobody owns would run forever.
      await this.engine.kill(sandbox.id).catch(() => {});
      throw error;
    }
    return this.#toApi(row);
  }

  async get(tenant: Tenant, sandboxId: string): Promise<ApiSandbox> {
    return this.#toApi(await this.#owned(tenant, sandboxId));
  }

  async list(tenant: Tenant, query: unknown): Promise<ApiSandboxList> {
    const { state, limit, cursor, ...rest } = ListSandboxesQuerySchema.parse(query);
    const metadataFilter = Object.entries(rest)
      .filter(([key]) => key.startsWith("metadata."))
      .map(([key, value]) => [key.slice("metadata.".length), String(value)] as const);
    let after = cursor === undefined ? undefined : decodeCursor(cursor);
    const wanted = state === undefined ? LIVE_STATES : [state];
    const page: ApiSandbox[] = [];
    let last: SandboxOwnerRow | undefined;
    let more = false;
    // State lives in the engine, not in the table, so rows are filtered here; they are read in batches, so a
    // tenant with a long history costs a page's worth of rows, not all of them.
    scan: for (;;) {
      const batch = await this.store.ownedSandboxes(tenant.id, after, LIST_SCAN_BATCH);
      for (const row of batch) {
        after = { createdAt: Number(row.created_at), sandboxId: row.sandbox_id };
        const sandbox = this.#toApi(row);
        if (!wanted.includes(sandbox.state)) continue;
        if (metadataFilter.some(([key, value]) => sandbox.metadata[key] !== value)) continue;
        if (page.length === limit) {
          more = true;
          break scan;
        }
        page.push(sandbox);
        last = row;
      }
      if (batch.length < LIST_SCAN_BATCH) break;
    }
    return { sandboxes: page, nextCursor: more && last ? encodeCursor(last) : null };
  }

  /** Idempotent: killing a sandbox of this tenant that has already ended changes nothing and is no error. */
  async kill(tenant: Tenant, sandboxId: string): Promise<void> {
    await this.#owned(tenant, sandboxId);
    if (!this.#isLive(sandboxId)) return;
    await this.engine.kill(sandboxId);
    await this.store.setSandboxTimeout(sandboxId, null);
  }

  async setTimeout(tenant: Tenant, sandboxId: string, timeoutMs: number): Promise<ApiSandbox> {
    const row = await this.#owned(tenant, sandboxId);
    this.#requireLive(row);
    const timeoutAt = Date.now() + timeoutMs;
    await this.store.setSandboxTimeout(sandboxId, timeoutAt);
    return this.#toApi({ ...row, timeout_at: timeoutAt });
  }

  async runCommand(tenant: Tenant, sandboxId: string, body: unknown): Promise<ApiCommandResult> {
    const request = RunCommandRequestSchema.parse(body) as z.output<typeof RunCommandRequestSchema>;
    const { running, spec } = await this.prepareCommand(tenant, sandboxId, request);
    const result = await running.agent.run({ ...spec, stdin: request.stdin !== undefined }, { stdin: request.stdin });
    return {
      exitCode: result.exitCode,
      signal: result.signal,
      timedOut: result.timedOut,
      stdout: result.stdout.toString("utf8"),
      stderr: result.stderr.toString("utf8") + (result.spawnError === undefined ? "" : spawnErrorLine(result.spawnError)),
    };
  }

  /**
   * The tenant's running sandbox (a paused one is resumed) and the agent's spec of a command in it: the sandbox's
   * env under the command's own, the working directory unless one is given.
   */
  async prepareCommand(tenant: Tenant, sandboxId: string, request: CommandFields): Promise<{ running: RunningSandbox; spec: ExecSpec }> {
    const row = await this.#owned(tenant, sandboxId);
    const running = await this.#running(row);
    const spec: ExecSpec = {
      ...(request.argv ? { argv: request.argv } : { shell: request.cmd }),
      cwd: request.cwd === undefined ? SANDBOX_WORKDIR : resolveInSandbox(request.cwd),
      env: { ...(JSON.parse(row.env) as Record<string, string>), ...request.env },
      user: request.user,
      timeoutMs: request.timeoutMs,
    };
    return { running, spec };
  }

  /** The tenant's sandbox that has not ended (running or paused): what network settings apply to. */
  async liveSandbox(tenant: Tenant, sandboxId: string): Promise<void> {
    this.#requireLive(await this.#owned(tenant, sandboxId));
  }

  /** Whether the sandbox is running or paused (not ended). */
  isLive(sandboxId: string): boolean {
    return this.#isLive(sandboxId);
  }

  async snapshot(tenant: Tenant, sandboxId: string): Promise<{ snapshotId: string }> {
    await this.#owned(tenant, sandboxId);
    const snapshot = await this.engine.snapshot(sandboxId);
    await this.store.recordSnapshot(snapshot.id, tenant.id, sandboxId);
    return { snapshotId: snapshot.id };
  }

  async pause(tenant: Tenant, sandboxId: string): Promise<ApiSandbox> {
    const row = await this.#owned(tenant, sandboxId);
    await this.engine.pause(sandboxId);
    return this.#toApi(row);
  }

  async resume(tenant: Tenant, sandboxId: string): Promise<ApiSandbox> {
    const row = await this.#owned(tenant, sandboxId);
    await this.engine.resume(sandboxId);
    return this.#toApi(row);
  }

  /** For SDK connect(): a paused sandbox is resumed; a running one is returned as it is. */
  async connect(tenant: Tenant, sandboxId: string): Promise<ApiSandbox> {
    const row = await this.#owned(tenant, sandboxId);
    this.#requireLive(row);
    if (this.#state(sandboxId) === "paused") await this.engine.resume(sandboxId);
    return this.#toApi(row);
  }

  /** `count` new sandboxes of this tenant from one of its snapshots, or from a running sandbox (snapshotted first). */
  async fork(tenant: Tenant, sourceId: string, count: number): Promise<ApiSandbox[]> {
    let snapshotId: string;
    let template: SandboxOwnerRow;
    const ownedSnapshot = await this.store.ownedSnapshot(tenant.id, sourceId);
    if (ownedSnapshot) {
      snapshotId = sourceId;
      template = await this.#owned(tenant, ownedSnapshot.sandbox_id);
    } else {
      template = await this.#owned(tenant, sourceId);
      snapshotId = (await this.snapshot(tenant, sourceId)).snapshotId;
    }
    if ((await this.#liveCount(tenant)) + count > tenant.limits.maxSandboxes) {
      throw new ApiError("quota_exceeded", `forking ${count} would exceed this tenant's limit of ${tenant.limits.maxSandboxes} sandboxes`);
    }
    const forks = await this.engine.fork(snapshotId, count);
    const now = Date.now();
    const rows = forks.map((sandbox): SandboxOwnerRow => ({ ...template, sandbox_id: sandbox.id, created_at: now, timeout_at: null, on_timeout: "kill" }));
    for (const row of rows) {
      // A fork has its source's policy and tunnels (not its exposed ports: those are the source's URLs).
      await this.options.network?.copyConfiguration(template.sandbox_id, row.sandbox_id);
      await this.store.recordSandbox(row);
    }
    return rows.map((row) => this.#toApi(row));
  }

  async listSnapshots(tenant: Tenant): Promise<Array<{ snapshotId: string; sandboxId: string; createdAt: string }>> {
    const rows = await this.store.ownedSnapshots(tenant.id);
    return rows
      .filter((row) => this.engine.hasSnapshot(row.snapshot_id))
      .map((row) => ({ snapshotId: row.snapshot_id, sandboxId: row.sandbox_id, createdAt: new Date(Number(row.created_at)).toISOString() }));
  }

  async deleteSnapshot(tenant: Tenant, snapshotId: string): Promise<void> {
    const row = await this.store.ownedSnapshot(tenant.id, snapshotId);
    if (!row || !this.engine.hasSnapshot(snapshotId)) throw notFound(`no snapshot ${snapshotId}`);
    await this.engine.deleteSnapshot(snapshotId);
    await this.store.forgetSnapshot(snapshotId);
  }

  /** Kills or pauses every sandbox past its timeout. Runs on a timer; one sweep at a time. */
  async sweepTimeouts(): Promise<void> {
    if (this.#sweeping) return;
    this.#sweeping = true;
    try {
      for (const row of await this.store.timedOutSandboxes(Date.now())) {
        const state = this.#state(row.sandbox_id);
        try {
          if (state === "running" && row.on_timeout === "pause") await this.engine.pause(row.sandbox_id);
          else if (state === "running" || (state === "paused" && row.on_timeout === "kill")) await this.engine.kill(row.sandbox_id);
        } catch (error) {
          if (!(error instanceof SandboxNotFoundError)) process.emitWarning(`timeout of sandbox ${row.sandbox_id}: ${String(error)}`);
        }
        await this.store.setSandboxTimeout(row.sandbox_id, null);
      }
    } finally {
      this.#sweeping = false;
    }
  }

  async #owned(tenant: Tenant, sandboxId: string): Promise<SandboxOwnerRow> {
    const row = await this.store.ownedSandbox(tenant.id, sandboxId);
    if (!row) throw notFound(`no sandbox ${sandboxId}`);
    return row;
  }

  #isLive(sandboxId: string): boolean {
    return LIVE_STATES.includes(this.#state(sandboxId));
  }

  async #liveCount(tenant: Tenant): Promise<number> {
    return (await this.store.ownedSandboxes(tenant.id)).filter((row) => this.#isLive(row.sandbox_id)).length;
  }

  #requireLive(row: SandboxOwnerRow): void {
    if (!this.#isLive(row.sandbox_id)) throw new ApiError("sandbox_gone", `sandbox ${row.sandbox_id} is no longer running`);
  }

  /** The tenant's sandbox, running (a paused one is resumed): what the files routes work on. */
  async runningSandbox(tenant: Tenant, sandboxId: string): Promise<RunningSandbox> {
    return this.#running(await this.#owned(tenant, sandboxId));
  }

  async #running(row: SandboxOwnerRow): Promise<RunningSandbox> {
    this.#requireLive(row);
    // Commands auto-resume a paused sandbox, as connect does.
    if (this.#state(row.sandbox_id) === "paused") return this.engine.resume(row.sandbox_id);
    return this.engine.sandbox(row.sandbox_id);
  }

  #state(sandboxId: string): ApiSandboxState {
    try {
      const state = this.engine.sandboxInfo(sandboxId).state;
      return state === "running" || state === "unhealthy" || state === "paused" || state === "lost" ? state : state === "creating" ? "running" : "stopped";
    } catch {
      return "stopped";
    }
  }

  #toApi(row: SandboxOwnerRow): ApiSandbox {
    return {
      sandboxId: row.sandbox_id,
      template: row.template,
      state: this.#state(row.sandbox_id),
      cpu: Number(row.cpus),
      memoryMB: Number(row.memory_mb),
      metadata: JSON.parse(row.metadata) as Record<string, string>,
      region: row.region,
      createdAt: new Date(Number(row.created_at)).toISOString(),
      timeoutAt: row.timeout_at === null ? null : new Date(Number(row.timeout_at)).toISOString(),
      onTimeout: row.on_timeout,
    };
  }
}

/**
 * A guest path: absolute as given, relative to the sandbox's working directory otherwise. Not normalised: `..`
 * and symlinks are the guest kernel's to resolve (lexically, `link/..` is not the link's parent).
 */
export function resolveInSandbox(path: string): string {
  return path.startsWith("/") ? path : `${SANDBOX_WORKDIR}/${path}`;
}

function encodeCursor(row: SandboxOwnerRow): string {
  return Buffer.from(JSON.stringify([Number(row.created_at), row.sandbox_id])).toString("base64url");
}

function decodeCursor(cursor: string): { createdAt: number; sandboxId: string } {
  try {
    const [createdAt, sandboxId] = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8")) as [unknown, unknown];
    if (typeof createdAt === "number" && typeof sandboxId === "string") return { createdAt, sandboxId };
  } catch {
    // Falls through to the error below.
  }
  throw new ApiError("bad_request", "cursor is not one this server gave out");
}
