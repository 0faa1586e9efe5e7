import type { ApiTenantUsage } from "@codecourier/protocol/api";
import { randomBytes } from "node:crypto";
import { sql, type Kysely, type Transaction } from "kysely";
import type { ControlTables, TenantLimits } from "./control-store.js";

/** What one hold takes from its tenant's usage. */
export interface QuotaAmounts {
  sandboxes?: number;
  cpus?: number;
  memoryMB?: number;
  diskMB?: number;
  snapshots?: number;
  snapshotBytes?: number;
}

/** One limit a request would break, as the API reports it. */
export interface QuotaBreach {
  limit: keyof TenantLimits;
  max: number;
  used: number;
  requested: number;
}

/** A request over one of its tenant's limits (the API's quota_exceeded, with the limit in `quota`). */
export class QuotaExceededError extends Error {
  constructor(
    message: string,
    readonly breach: QuotaBreach,
  ) {
    super(message);
    this.name = "QuotaExceededError";
  }
}

const usageColumns = {
  sandboxes: "sandboxes",
  cpus: "cpus",
  memoryMB: "memory_mb",
  diskMB: "disk_mb",
  snapshots: "snapshots",
  snapshotBytes: "snapshot_bytes",
} as const satisfies Record<keyof ApiTenantUsage, keyof ControlTables["tenant_usage"]>;

/** Which limit bounds each usage counter. */
const limitOf: Record<keyof ApiTenantUsage, keyof TenantLimits> = {
  sandboxes: "maxSandboxes",
  cpus: "maxTotalCpus",
  memoryMB: "maxTotalMemoryMB",
  diskMB: "maxTotalDiskMB",
  snapshots: "maxSnapshots",
  snapshotBytes: "maxSnapshotBytes",
};

const what: Record<keyof ApiTenantUsage, string> = {
  sandboxes: "live sandboxes",
  cpus: "vCPUs of live sandboxes",
  memoryMB: "MB of RAM of live sandboxes",
  diskMB: "MB of root disk of live sandboxes",
  snapshots: "snapshots",
  snapshotBytes: "bytes of snapshots",
};

const EMPTY_USAGE: ApiTenantUsage = { sandboxes: 0, cpus: 0, memoryMB: 0, diskMB: 0, snapshots: 0, snapshotBytes: 0 };

/**
 * A tenant's use of its limits, kept as holds (one per live sandbox or kept snapshot) and a counter row that is
 * their sum. Taking a hold is one conditional UPDATE of the counter row (`… WHERE used + n <= max`) in the same
 * transaction as the hold's insert: atomic on SQLite (one writer) and on Postgres (the row is locked by the
 * update), so parallel creates can never pass a limit together, and a request either gets its whole hold or
 * changes nothing. Releasing deletes the hold and subtracts exactly what it took, once.
 */
export class TenantQuota {
  constructor(private readonly db: Kysely<ControlTables>) {}

  static async migrate(db: Kysely<ControlTables>): Promise<void> {
    await db.schema
      .createTable("tenant_usage")
      .ifNotExists()
      .addColumn("tenant_id", "text", (c) => c.primaryKey())
      .addColumn("sandboxes", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("cpus", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("memory_mb", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("disk_mb", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("snapshots", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("snapshot_bytes", "bigint", (c) => c.notNull().defaultTo(0))
      .execute();
    await db.schema
      .createTable("quota_holds")
      .ifNotExists()
      .addColumn("hold_id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull())
      /** The sandbox or snapshot the hold is for; null while it is being made. */
      .addColumn("subject_id", "text")
      .addColumn("sandboxes", "integer", (c) => c.notNull())
      .addColumn("cpus", "integer", (c) => c.notNull())
      .addColumn("memory_mb", "integer", (c) => c.notNull())
      .addColumn("disk_mb", "integer", (c) => c.notNull())
      .addColumn("snapshots", "integer", (c) => c.notNull())
      .addColumn("snapshot_bytes", "bigint", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .execute();
    await db.schema.createIndex("quota_holds_subject").ifNotExists().on("quota_holds").column("subject_id").execute();
  }

  /**
   * Takes `amounts` from the tenant's limits, or throws QuotaExceededError naming the first limit it would break
   * (and takes nothing). Returns the hold's id, to attach to what it is for and to release.
   */
  async hold(tenantId: string, limits: TenantLimits, amounts: QuotaAmounts): Promise<string> {
    const holdId = `hold_${randomBytes(8).toString("hex")}`;
    const full = { ...EMPTY_USAGE, ...amounts };
    const taken = await this.db.transaction().execute(async (trx) => {
      if (!(await takeFromUsage(trx, tenantId, full, limits))) return false;
      await trx
        .insertInto("quota_holds")
        .values({ hold_id: holdId, tenant_id: tenantId, subject_id: null, ...toRow(full), created_at: Date.now() })
        .execute();
      return true;
    });
    if (!taken) throw this.#breachError(await this.usage(tenantId), limits, full);
    return holdId;
  }

  /** Adds `amounts` to an existing hold, within the limits (QuotaExceededError otherwise; the hold stays as it was). */
  async extend(holdId: string, tenantId: string, limits: TenantLimits, amounts: QuotaAmounts): Promise<void> {
    const full = { ...EMPTY_USAGE, ...amounts };
    const taken = await this.db.transaction().execute(async (trx) => {
      if (!(await takeFromUsage(trx, tenantId, full, limits))) return false;
      let update = trx.updateTable("quota_holds").where("hold_id", "=", holdId);
      for (const [key, column] of Object.entries(usageColumns) as Array<[keyof ApiTenantUsage, (typeof usageColumns)[keyof ApiTenantUsage]]>) {
        if (full[key] !== 0) update = update.set(column, sql`${sql.ref(column)} + ${full[key]}`);
      }
      await update.execute();
      return true;
    });
    if (!taken) throw this.#breachError(await this.usage(tenantId), limits, full);
  }

  /** A hold for something that exists already and has none (made before holds were kept), whatever the limits. */
  async adopt(tenantId: string, subjectId: string, amounts: QuotaAmounts): Promise<void> {
    const holdId = await this.hold(tenantId, UNLIMITED, amounts);
    await this.attach(holdId, subjectId);
  }

  /** Names what a hold is for (the sandbox or snapshot made with it), so it can be released by that id. */
  async attach(holdId: string, subjectId: string): Promise<void> {
    await this.db.updateTable("quota_holds").set({ subject_id: subjectId }).where("hold_id", "=", holdId).execute();
  }

  /** Gives back a hold; releasing one that is already gone changes nothing. */
  async release(holdId: string): Promise<void> {
    await this.db.transaction().execute((trx) => releaseWhere(trx, "hold_id", holdId));
  }

  /** Gives back every hold of this sandbox or snapshot (it ended, or was deleted). */
  async releaseSubject(subjectId: string): Promise<void> {
    await this.db.transaction().execute((trx) => releaseWhere(trx, "subject_id", subjectId));
  }

  /** Holds' subjects, for reconciliation with what really still exists. */
  async heldSubjects(): Promise<Array<{ holdId: string; subjectId: string | null; createdAt: number }>> {
    const rows = await this.db.selectFrom("quota_holds").select(["hold_id", "subject_id", "created_at"]).execute();
    return rows.map((row) => ({ holdId: row.hold_id, subjectId: row.subject_id, createdAt: Number(row.created_at) }));
  }

  async usage(tenantId: string): Promise<ApiTenantUsage> {
    const row = await this.db.selectFrom("tenant_usage").selectAll().where("tenant_id", "=", tenantId).executeTakeFirst();
    if (!row) return { ...EMPTY_USAGE };
    return {
      sandboxes: Number(row.sandboxes),
      cpus: Number(row.cpus),
      memoryMB: Number(row.memory_mb),
      diskMB: Number(row.disk_mb),
      snapshots: Number(row.snapshots),
      snapshotBytes: Number(row.snapshot_bytes),
    };
  }

  #breachError(usage: ApiTenantUsage, limits: TenantLimits, requested: ApiTenantUsage): QuotaExceededError {
    for (const key of Object.keys(usageColumns) as Array<keyof ApiTenantUsage>) {
      const max = limits[limitOf[key]];
      if (requested[key] > 0 && usage[key] + requested[key] > max) {
        return new QuotaExceededError(
          `this tenant has ${usage[key]} of its ${max} ${what[key]}; this request needs ${requested[key]} more (kill or delete some first, or ask for a higher limit)`,
          { limit: limitOf[key], max, used: usage[key], requested: requested[key] },
        );
      }
    }
    // Another request released quota between the refused update and this read: the caller may simply retry.
    return new QuotaExceededError("this tenant's limits were reached by requests made at the same time; retry", {
      limit: "maxSandboxes",
      max: limits.maxSandboxes,
      used: usage.sandboxes,
      requested: requested.sandboxes,
    });
  }
}

const UNLIMITED: TenantLimits = {
  maxSandboxes: Number.MAX_SAFE_INTEGER,
  maxCpus: Number.MAX_SAFE_INTEGER,
  maxMemoryMB: Number.MAX_SAFE_INTEGER,
  maxTotalCpus: Number.MAX_SAFE_INTEGER,
  maxTotalMemoryMB: Number.MAX_SAFE_INTEGER,
  maxDiskMB: Number.MAX_SAFE_INTEGER,
  maxTotalDiskMB: Number.MAX_SAFE_INTEGER,
  maxSnapshots: Number.MAX_SAFE_INTEGER,
  maxSnapshotBytes: Number.MAX_SAFE_INTEGER,
};

/** The conditional update at the heart of a hold: adds `amounts` to the counters only if none passes its limit. */
async function takeFromUsage(trx: Transaction<ControlTables>, tenantId: string, amounts: ApiTenantUsage, limits: TenantLimits): Promise<boolean> {
  await trx.insertInto("tenant_usage").values({ tenant_id: tenantId, ...zeroRow() }).onConflict((oc) => oc.column("tenant_id").doNothing()).execute();
  let update = trx.updateTable("tenant_usage").where("tenant_id", "=", tenantId);
  let changes = 0;
  for (const key of Object.keys(usageColumns) as Array<keyof ApiTenantUsage>) {
    const column = usageColumns[key];
    if (amounts[key] === 0) continue;
    changes++;
    update = update.set(column, sql`${sql.ref(column)} + ${amounts[key]}`).where(sql`${sql.ref(column)} + ${amounts[key]}`, "<=", limits[limitOf[key]]);
  }
  if (changes === 0) return true;
  const result = await update.executeTakeFirst();
  return Number(result.numUpdatedRows) > 0;
}

function zeroRow() {
  return { sandboxes: 0, cpus: 0, memory_mb: 0, disk_mb: 0, snapshots: 0, snapshot_bytes: 0 };
}

function toRow(usage: ApiTenantUsage) {
  return {
    sandboxes: usage.sandboxes,
    cpus: usage.cpus,
    memory_mb: usage.memoryMB,
    disk_mb: usage.diskMB,
    snapshots: usage.snapshots,
    snapshot_bytes: usage.snapshotBytes,
  };
}

async function releaseWhere(trx: Transaction<ControlTables>, column: "hold_id" | "subject_id", value: string): Promise<void> {
  const holds = await trx.deleteFrom("quota_holds").where(column, "=", value).returningAll().execute();
  for (const hold of holds) {
    let update = trx.updateTable("tenant_usage").where("tenant_id", "=", hold.tenant_id);
    for (const column of Object.values(usageColumns)) update = update.set(column, sql`${sql.ref(column)} - ${Number(hold[column])}`);
    await update.execute();
  }
}
