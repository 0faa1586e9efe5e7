import {
  API_LIMITS,
  CreateSandboxRequestSchema,
  ListSandboxesQuerySchema,
  RunCommandRequestSchema,
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
import { SandboxEnv } from "./sandbox-env.js";
import { DEFAULT_SHAPE, TemplateCatalog, type TemplateCatalogOptions } from "./template-catalog.js";
import { roundDiskMB, roundShape, type Shape } from "./sandbox-shapes.js";
import { CONSOLE_LOG_MAX_BYTES } from "../vmm/console-log.js";
import { QuotaExceededError, type QuotaAmounts } from "./tenant-quota.js";
import { SANDBOX_SHAPES, type ApiLimitsAnswer } from "@codecourier/protocol/api";
import { runToCompletion, type CompletedCommand } from "./command-output.js";
import { TenantOutputBudgets } from "./output-budget.js";
import type { NetworkService } from "../network/network-service.js";

export interface SandboxServiceOptions {
  /** The region this host serves; a create naming another is refused. */
  region: string;
  /** How often timed-out sandboxes are looked for. Default 1000 ms. */
  timeoutSweepMs?: number;
  /** Sandbox networking; without it sandboxes have no network and the network routes answer 503. */
  network?: NetworkService;
  /** Warm pools and collection of template shapes. */
  templates?: TemplateCatalogOptions;
  /** How often template shapes are swept and quota holds reconciled with what exists. Default 60 s. */
  maintenanceMs?: number;
}

/** A quota hold of a create that has not finished yet is taken as abandoned (server killed mid-create) after this. */
const PENDING_HOLD_MAX_AGE_MS = 10 * 60_000;

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
  readonly #env = new SandboxEnv();
  #imageDisk: Promise<number> | undefined;
  /** The image's disk size once #imageDiskMB has read it (for rows from before disks were settable). */
  #imageDiskKnown = 0;
  readonly #sweeper: NodeJS.Timeout;
  readonly #maintenance: NodeJS.Timeout;
  #sweeping = false;
  #maintaining: Promise<void> | undefined;

  constructor(
    private readonly engine: SandboxEngine,
    private readonly store: ControlStore,
    private readonly options: SandboxServiceOptions,
  ) {
    this.templates = new TemplateCatalog(engine, store, options.templates);
    // A sandbox that ends in any way (kill, crash, timeout, lost) gives its quota back.
    engine.onSandboxEnded((sandboxId) => {
      this.#env.forget(sandboxId);
      void this.store.quota.releaseSubject(sandboxId).catch((error: unknown) =>
        // Not lost: maintain() gives back holds of sandboxes that no longer exist.
        process.emitWarning(`sandbox ${sandboxId}: giving its quota back failed (maintenance retries): ${String(error)}`),
      );
    });
    // Each sweep reads the database and stops VMs: one that fails is reported, and the next second tries again.
    this.#sweeper = setInterval(() => void this.sweepTimeouts().catch((error: unknown) => process.emitWarning(`timeout sweep: ${String(error)}`)), options.timeoutSweepMs ?? 1000);
    this.#sweeper.unref();
    this.#maintenance = setInterval(() => void this.maintain(), options.maintenanceMs ?? 60_000);
    this.#maintenance.unref();
    void this.#imageDiskMB().catch(() => {});
    void this.maintain();
  }

  close(): void {
    clearInterval(this.#sweeper);
    clearInterval(this.#maintenance);
  }

  /**
   * Gives back quota held for sandboxes and snapshots that no longer exist (a crash between an end and its
   * release, a server killed mid-create), takes it for live ones that have none (a data dir from before quota
   * holds), and sweeps template shapes. One run at a time.
   */
  maintain(): Promise<void> {
    this.#maintaining ??= (async () => {
      try {
        await this.#reconcileQuota();
        await this.templates.sweep();
      } catch (error) {
        process.emitWarning(`maintenance: ${String(error)}`);
      } finally {
        this.#maintaining = undefined;
      }
    })();
    return this.#maintaining;
  }

  async #reconcileQuota(): Promise<void> {
    const now = Date.now();
    const held = new Set<string>();
    for (const hold of await this.store.quota.heldSubjects()) {
      if (hold.subjectId === null) {
        if (now - hold.createdAt > PENDING_HOLD_MAX_AGE_MS) await this.store.quota.release(hold.holdId);
        continue;
      }
      held.add(hold.subjectId);
      if (!this.#isLive(hold.subjectId) && !this.engine.hasSnapshot(hold.subjectId)) await this.store.quota.releaseSubject(hold.subjectId);
    }
    for (const info of this.engine.listSandboxes()) {
      if (held.has(info.id) || !this.#isLive(info.id)) continue;
      const row = await this.store.ownedSandboxAnyTenant(info.id);
      if (row) await this.store.quota.adopt(row.tenant_id, info.id, sandboxAmounts({ cpus: Number(row.cpus), memoryMB: Number(row.memory_mb) }, await this.#diskMBOf(row)));
    }
  }

  /** The tenant's limits, what it uses of them, and the host's per-sandbox bounds. */
  async limits(tenant: Tenant): Promise<ApiLimitsAnswer> {
    return {
      tenant: tenant.name,
      limits: tenant.limits,
      usage: await this.store.quota.usage(tenant.id),
      sandbox: { defaultDiskMB: await this.#imageDiskMB(), consoleLogBytes: CONSOLE_LOG_MAX_BYTES },
      shapes: { cpus: [...SANDBOX_SHAPES.cpus], memoryMB: [...SANDBOX_SHAPES.memoryMB] },
    };
  }

  async create(tenant: Tenant, body: unknown): Promise<ApiSandbox> {
    const request = CreateSandboxRequestSchema.parse(body);
    if (request.region !== undefined && request.region !== this.options.region) {
      throw new ApiError("bad_request", `this server serves region ${this.options.region}, not ${request.region}`);
    }
    const { name, version } = TemplateCatalog.resolveName(request.template);
    const requested: Shape = { cpus: request.cpu ?? DEFAULT_SHAPE.cpus, memoryMB: request.memoryMB ?? DEFAULT_SHAPE.memoryMB };
    const { cpus, memoryMB } = roundShape(requested);
    const templateDiskMB = await this.#imageDiskMB();
    const diskMB = roundDiskMB(request.diskMB, templateDiskMB);
    checkSandboxShape(tenant, { cpus, memoryMB }, diskMB);
    // Taken before anything is made and given back if anything fails: parallel creates cannot pass the limits.
    const hold = await this.store.quota.hold(tenant.id, tenant.limits, sandboxAmounts({ cpus, memoryMB }, diskMB));
    let sandbox: RunningSandbox;
    try {
      const snapshotId = await this.templates.snapshotFor(name, version, cpus, memoryMB);
      sandbox = await this.engine.create(snapshotId);
      await this.store.quota.attach(hold, sandbox.id);
    } catch (error) {
      await this.store.quota.release(hold);
      throw error;
    }
    try {
      if (diskMB > templateDiskMB) await this.engine.growRootDisk(sandbox.id, diskMB * MB);
    } catch (error) {
      await this.engine.kill(sandbox.id).catch(() => {});
      await this.store.quota.release(hold);
      throw error;
    }
    const now = Date.now();
    const row: SandboxOwnerRow = {
      sandbox_id: sandbox.id,
      tenant_id: tenant.id,
      template: `${name}@${version}`,
      metadata: JSON.stringify(request.metadata ?? {}),
      // The values live in the guest only (control/sandbox-env.ts); old rows may still hold some.
      env: "{}",
      region: this.options.region,
      cpus,
      memory_mb: memoryMB,
      disk_mb: diskMB,
      created_at: now,
      timeout_at: request.timeoutMs === undefined ? null : now + request.timeoutMs,
      on_timeout: request.onTimeout,
    };
    try {
      await this.#env.give(sandbox.id, sandbox.agent, request.env ?? {});
      await this.options.network?.configure(sandbox.id, request.network ?? TemplateCatalog.networkPolicy(name), tenant.id);
      await this.store.recordSandbox(row);
    } catch (error) {
      // Nothing half-created: a sandbox nobody owns would run forever (its end gives the quota back).
      await this.engine.kill(sandbox.id).catch(() => {});
      await this.store.quota.release(hold);
      throw error;
    }
    const answer = this.#toApi(row);
    const rounded = requested.cpus !== cpus || requested.memoryMB !== memoryMB || (request.diskMB !== undefined && request.diskMB !== diskMB);
    return rounded ? { ...answer, requested: { cpu: requested.cpus, memoryMB: requested.memoryMB, ...(request.diskMB === undefined ? {} : { diskMB: request.diskMB }) } } : answer;
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

  /**
   * Output the server holds per tenant (kept process output, run-to-completion output being collected): one budget
   * each, shared with the ProcessService (command-output.ts, output-budget.ts).
   */
  readonly outputBudgets = new TenantOutputBudgets();

  /**
   * Runs a command to completion; its output is capped per stream (maxOutputBytes) and by the tenant's output
   * budget. Release the result once answered (commandResultJson does).
   */
  async runCommand(tenant: Tenant, sandboxId: string, body: unknown): Promise<CompletedCommand> {
    const request = RunCommandRequestSchema.parse(body) as z.output<typeof RunCommandRequestSchema>;
    const { running, spec } = await this.prepareCommand(tenant, sandboxId, request);
    return runToCompletion(running.agent, { ...spec, stdin: request.stdin !== undefined }, {
      stdin: request.stdin,
      maxOutputBytes: request.maxOutputBytes ?? API_LIMITS.defaultCommandOutputBytes,
      budget: this.outputBudgets.of(tenant.id),
    });
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
      env: { ...(JSON.parse(row.env) as Record<string, string>), ...(await this.#env.of(row.sandbox_id, running.agent)), ...request.env },
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

  /**
   * Snapshots the tenant's sandbox. The snapshot count is held before it is taken; its bytes are known only after,
   * so they are added then, and a snapshot that would pass the byte limit is deleted again and refused.
   */
  async snapshot(tenant: Tenant, sandboxId: string): Promise<{ snapshotId: string }> {
    await this.#owned(tenant, sandboxId);
    const hold = await this.store.quota.hold(tenant.id, tenant.limits, { snapshots: 1 });
    let snapshotId: string | undefined;
    try {
      snapshotId = (await this.engine.snapshot(sandboxId)).id;
      await this.store.quota.extend(hold, tenant.id, tenant.limits, { snapshotBytes: await this.engine.snapshotBytes(snapshotId) });
      await this.store.quota.attach(hold, snapshotId);
      await this.store.recordSnapshot(snapshotId, tenant.id, sandboxId);
    } catch (error) {
      if (snapshotId !== undefined) await this.engine.deleteSnapshot(snapshotId, { whileInUse: true }).catch(() => {});
      await this.store.quota.release(hold);
      throw error;
    }
    return { snapshotId };
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
    const shape = { cpus: Number(template.cpus), memoryMB: Number(template.memory_mb) };
    const diskMB = await this.#diskMBOf(template);
    // One hold per fork, all taken before any is made: a fork over the limits changes nothing.
    const holds: string[] = [];
    let forks: RunningSandbox[] = [];
    try {
      for (let i = 0; i < count; i++) holds.push(await this.store.quota.hold(tenant.id, tenant.limits, sandboxAmounts(shape, diskMB)));
      forks = await this.engine.fork(snapshotId, count);
      for (const [i, sandbox] of forks.entries()) await this.store.quota.attach(holds[i]!, sandbox.id);
    } catch (error) {
      await Promise.all(forks.map((sandbox) => this.engine.kill(sandbox.id).catch(() => {})));
      for (const hold of holds) await this.store.quota.release(hold);
      if (error instanceof QuotaExceededError) throw new QuotaExceededError(`forking ${count}: ${error.message}`, error.breach);
      throw error;
    }
    const now = Date.now();
    const rows = forks.map((sandbox): SandboxOwnerRow => ({ ...template, sandbox_id: sandbox.id, disk_mb: diskMB, created_at: now, timeout_at: null, on_timeout: "kill" }));
    for (const row of rows) {
      // A fork has its source's policy and tunnels (not its exposed ports: those are the source's URLs), and env.
      await this.options.network?.copyConfiguration(template.sandbox_id, row.sandbox_id);
      this.#env.copy(template.sandbox_id, row.sandbox_id);
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
    // Also while its source or forks of it run: their disks keep the layers they need (see the engine).
    await this.engine.deleteSnapshot(snapshotId, { whileInUse: true });
    await this.store.forgetSnapshot(snapshotId);
    await this.store.quota.releaseSubject(snapshotId);
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

  /** The image's root disk size in MB (every sandbox's unless grown), read once. */
  #imageDiskMB(): Promise<number> {
    // A failed read (qemu-img could not be spawned: EMFILE) is not kept, or every later create would fail with it.
    this.#imageDisk ??= this.engine.imageDiskBytes().then(
      (bytes) => (this.#imageDiskKnown = Math.floor(bytes / MB)),
      (error: unknown) => {
        this.#imageDisk = undefined;
        throw error;
      },
    );
    return this.#imageDisk;
  }

  /** A sandbox's root disk size (rows from before disks were settable say 0: the image's). */
  async #diskMBOf(row: SandboxOwnerRow): Promise<number> {
    return Number(row.disk_mb) || (await this.#imageDiskMB());
  }

  #toApi(row: SandboxOwnerRow): ApiSandbox {
    return {
      sandboxId: row.sandbox_id,
      template: row.template,
      state: this.#state(row.sandbox_id),
      cpu: Number(row.cpus),
      memoryMB: Number(row.memory_mb),
      diskMB: Number(row.disk_mb) || this.#imageDiskKnown,
      metadata: JSON.parse(row.metadata) as Record<string, string>,
      region: row.region,
      createdAt: new Date(Number(row.created_at)).toISOString(),
      timeoutAt: row.timeout_at === null ? null : new Date(Number(row.timeout_at)).toISOString(),
      onTimeout: row.on_timeout,
    };
  }
}

const MB = 1024 * 1024;

/** Per-sandbox limits: checked before any quota is held. */
function checkSandboxShape(tenant: Tenant, shape: Shape, diskMB: number): void {
  const { limits } = tenant;
  if (diskMB > limits.maxDiskMB) {
    throw new QuotaExceededError(`diskMB ${diskMB} is over this tenant's limit of ${limits.maxDiskMB} per sandbox`, { limit: "maxDiskMB", max: limits.maxDiskMB, used: 0, requested: diskMB });
  }
  if (shape.cpus > limits.maxCpus) {
    throw new QuotaExceededError(`cpu ${shape.cpus} is over this tenant's limit of ${limits.maxCpus} per sandbox`, { limit: "maxCpus", max: limits.maxCpus, used: 0, requested: shape.cpus });
  }
  if (shape.memoryMB > limits.maxMemoryMB) {
    throw new QuotaExceededError(`memoryMB ${shape.memoryMB} is over this tenant's limit of ${limits.maxMemoryMB} per sandbox`, {
      limit: "maxMemoryMB",
      max: limits.maxMemoryMB,
      used: 0,
      requested: shape.memoryMB,
    });
  }
}

function sandboxAmounts(shape: Shape, diskMB: number): QuotaAmounts {
  return { sandboxes: 1, cpus: shape.cpus, memoryMB: shape.memoryMB, diskMB };
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
