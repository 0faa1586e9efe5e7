import Database from "better-sqlite3";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { dirname, join } from "node:path";
import { dataDir } from "../config.js";
import { Kysely, SqliteDialect, sql, type Dialect } from "kysely";
import type { ApiTenantLimits } from "@codecourier/protocol/api";
import { TenantQuota } from "./tenant-quota.js";

/**
 * The control plane's records: tenants, their API keys, which tenant owns which sandbox, and template names. Kept
 * behind Kysely so the same queries run on the embedded SQLite and, for fleets, on Postgres. Separate from the
 * engine's own tables (state/database.ts), which describe one host's VMs and files.
 */
export interface ControlTables {
  tenants: {
    id: string;
    name: string;
    max_sandboxes: number;
    max_cpus: number;
    max_memory_mb: number;
    max_total_cpus: number;
    max_total_memory_mb: number;
    max_disk_mb: number;
    max_total_disk_mb: number;
    max_snapshots: number;
    max_snapshot_bytes: number;
    created_at: number;
  };
  /** What each tenant uses now: the sum of its quota holds (control/tenant-quota.ts). */
  tenant_usage: { tenant_id: string } & QuotaColumns;
  /** One per live sandbox or kept snapshot: what it takes from its tenant's limits. */
  quota_holds: { hold_id: string; tenant_id: string; subject_id: string | null; created_at: number } & QuotaColumns;
  api_keys: {
    id: string;
    tenant_id: string;
    /** sha256 of the key: keys are 256 random bits, so a fast hash is enough and a lookup by hash is safe. */
    key_hash: string;
    /** The key's first characters, to recognise it in listings. */
    prefix: string;
    created_at: number;
    revoked_at: number | null;
  };
  sandbox_owners: {
    sandbox_id: string;
    tenant_id: string;
    template: string;
    /** JSON object of string → string. */
    metadata: string;
    /** JSON object: environment variables every command in the sandbox gets. */
    env: string;
    region: string;
    cpus: number;
    memory_mb: number;
    /** Root disk size; 0 in rows from before disks were settable (the template's size). */
    disk_mb: number;
    created_at: number;
    timeout_at: number | null;
    on_timeout: "kill" | "pause";
    /** When the server first saw the sandbox ended (stopped, killed, lost); its rows are pruned a retention period later. */
    ended_at: number | null;
  };
  /** A template name's saved snapshot for one VM shape: a clone has its template's vCPUs and RAM. */
  templates: {
    name: string;
    version: number;
    cpus: number;
    memory_mb: number;
    snapshot_id: string;
    created_at: number;
    /** When a create last used this shape (templates of shapes nobody uses are collected). */
    last_used_at: number;
  };
  snapshot_owners: {
    snapshot_id: string;
    tenant_id: string;
    sandbox_id: string;
    created_at: number;
  };
  /** A sandbox's network: policy, tunnels, exposed ports (JSON, see network/network-service.ts). */
  sandbox_networks: {
    sandbox_id: string;
    config: string;
  };
}

/** The amounts a quota hold takes and a tenant's usage sums up. */
export interface QuotaColumns {
  sandboxes: number;
  cpus: number;
  memory_mb: number;
  disk_mb: number;
  snapshots: number;
  snapshot_bytes: number;
}

/** A sandbox's owner record as the service makes it; `ended_at` is the control store's own business. */
export type SandboxOwnerRow = Omit<ControlTables["sandbox_owners"], "ended_at">;

/** A request's API key: whose it is, and which key (streams opened with it end when it is revoked). */
export interface Authenticated {
  tenant: Tenant;
  keyId: string;
}

export interface Tenant {
  id: string;
  name: string;
  limits: TenantLimits;
}

/** What one tenant may use; the API's view is TenantLimitsSchema (protocol/api.ts), which documents each field. */
export type TenantLimits = ApiTenantLimits;

export interface ApiKeyInfo {
  keyId: string;
  tenant: string;
  prefix: string;
  createdAt: string;
  revokedAt: string | null;
}

/**
 * Room for the front page's sample (4 vCPUs, 8192 MB) a few times over; RAM is only used as the guest touches it,
 * but the totals bound what one tenant can make the host commit. Operators change them per tenant
 * (`codecourier tenants limits`).
 */
export const DEFAULT_TENANT_LIMITS: TenantLimits = {
  maxSandboxes: 20,
  maxCpus: 8,
  maxMemoryMB: 16384,
  maxTotalCpus: 32,
  maxTotalMemoryMB: 65536,
  maxDiskMB: 32768,
  maxTotalDiskMB: 131072,
  maxSnapshots: 20,
  maxSnapshotBytes: 20 * 1024 ** 3,
};

/** The control plane's embedded database: its own file, so `codecourier keys` works while the server runs. */
export function controlDatabasePath(): string {
  return join(dataDir(), CONTROL_DATABASE_FILE);
}

/** The control database's file name inside a data dir. */
export const CONTROL_DATABASE_FILE = "control.db";

const KEY_PREFIX = "cc_";
const tenantNamePattern = /^[a-z0-9][a-z0-9_-]{0,62}$/;

export class InvalidTenantNameError extends Error {
  constructor(name: string) {
    super(`tenant name ${JSON.stringify(name.slice(0, 80))} is not valid: use 1-63 of a-z 0-9 _ - (starting with a letter or digit)`);
    this.name = "InvalidTenantNameError";
  }
}

export class TenantNotFoundError extends Error {
  constructor(name: string) {
    super(`no tenant named ${JSON.stringify(name.slice(0, 80))} (tenants are made with their first key: \`codecourier keys create --tenant NAME\`)`);
    this.name = "TenantNotFoundError";
  }
}

export class KeyNotFoundError extends Error {
  constructor(key: string) {
    super(`no API key ${JSON.stringify(key.slice(0, 80))} (give its id, as listed by \`codecourier keys list\`)`);
    this.name = "KeyNotFoundError";
  }
}

const hashKey = (apiKey: string) => createHash("sha256").update(apiKey).digest("hex");
const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export class ControlStore {
  /** Tenants' usage of their limits, taken and given back atomically. */
  readonly quota: TenantQuota;

  private constructor(readonly db: Kysely<ControlTables>) {
    this.quota = new TenantQuota(db);
  }

  /** The embedded default: a SQLite file (WAL, so the CLI can manage keys while the server runs). */
  static async openSqlite(path: string): Promise<ControlStore> {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    // Made 0600 before SQLite opens it (SQLite makes its -wal and -shm files with the database's mode): the
    // database holds key hashes and sandboxes' env, whatever the umask of the process that creates it.
    closeSync(openSync(path, "a", 0o600));
    const database = new Database(path);
    database.pragma("journal_mode = WAL");
    database.pragma("busy_timeout = 5000");
    return ControlStore.open(new SqliteDialect({ database }));
  }

  static async open(dialect: Dialect): Promise<ControlStore> {
    const store = new ControlStore(new Kysely<ControlTables>({ dialect }));
    await store.#migrate();
    return store;
  }

  async close(): Promise<void> {
    await this.db.destroy();
  }

  async #migrate(): Promise<void> {
    const { schema } = this.db;
    await schema
      .createTable("tenants")
      .ifNotExists()
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("name", "text", (c) => c.notNull().unique())
      .addColumn("max_sandboxes", "integer", (c) => c.notNull())
      .addColumn("max_cpus", "integer", (c) => c.notNull())
      .addColumn("max_memory_mb", "integer", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .execute();
    await schema
      .createTable("api_keys")
      .ifNotExists()
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("key_hash", "text", (c) => c.notNull().unique())
      .addColumn("prefix", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("revoked_at", "bigint")
      .execute();
    await schema
      .createTable("sandbox_owners")
      .ifNotExists()
      .addColumn("sandbox_id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("template", "text", (c) => c.notNull())
      .addColumn("metadata", "text", (c) => c.notNull())
      .addColumn("env", "text", (c) => c.notNull())
      .addColumn("region", "text", (c) => c.notNull())
      .addColumn("cpus", "integer", (c) => c.notNull())
      .addColumn("memory_mb", "integer", (c) => c.notNull())
      .addColumn("disk_mb", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("timeout_at", "bigint")
      .addColumn("on_timeout", "text", (c) => c.notNull())
      .addColumn("ended_at", "bigint")
      .execute();
    // Databases made before ended_at existed get it added (null: "not seen ended yet", so the next sweep sets it).
    const ownerColumns = (await this.db.introspection.getTables()).find((t) => t.name === "sandbox_owners")?.columns ?? [];
    if (!ownerColumns.some((c) => c.name === "ended_at")) await schema.alterTable("sandbox_owners").addColumn("ended_at", "bigint").execute();
    await schema.createIndex("sandbox_owners_ended").ifNotExists().on("sandbox_owners").column("ended_at").execute();
    await schema.createIndex("sandbox_owners_tenant").ifNotExists().on("sandbox_owners").columns(["tenant_id", "created_at"]).execute();
    await schema
      .createTable("templates")
      .ifNotExists()
      .addColumn("name", "text", (c) => c.notNull())
      .addColumn("version", "integer", (c) => c.notNull())
      .addColumn("cpus", "integer", (c) => c.notNull())
      .addColumn("memory_mb", "integer", (c) => c.notNull())
      .addColumn("snapshot_id", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("last_used_at", "bigint", (c) => c.notNull().defaultTo(0))
      .addPrimaryKeyConstraint("templates_pk", ["name", "version", "cpus", "memory_mb"])
      .execute();
    await schema
      .createTable("snapshot_owners")
      .ifNotExists()
      .addColumn("snapshot_id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("sandbox_id", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .execute();
    await schema
      .createTable("sandbox_networks")
      .ifNotExists()
      .addColumn("sandbox_id", "text", (c) => c.primaryKey())
      .addColumn("config", "text", (c) => c.notNull())
      .execute();
    // Columns added after the first release: a data dir made by an older server gets them with their defaults.
    await this.#addMissingColumns("tenants", [
      ["max_total_cpus", "integer", DEFAULT_TENANT_LIMITS.maxTotalCpus],
      ["max_total_memory_mb", "integer", DEFAULT_TENANT_LIMITS.maxTotalMemoryMB],
      ["max_disk_mb", "integer", DEFAULT_TENANT_LIMITS.maxDiskMB],
      ["max_total_disk_mb", "integer", DEFAULT_TENANT_LIMITS.maxTotalDiskMB],
      ["max_snapshots", "integer", DEFAULT_TENANT_LIMITS.maxSnapshots],
      ["max_snapshot_bytes", "bigint", DEFAULT_TENANT_LIMITS.maxSnapshotBytes],
    ]);
    await this.#addMissingColumns("templates", [["last_used_at", "bigint", 0]]);
    await this.#addMissingColumns("sandbox_owners", [["disk_mb", "integer", 0]]);
    await TenantQuota.migrate(this.db);
  }

  async #addMissingColumns(table: keyof ControlTables, columns: Array<[string, "integer" | "bigint", number]>): Promise<void> {
    const existing = (await this.db.introspection.getTables()).find((t) => t.name === table)?.columns.map((c) => c.name) ?? [];
    for (const [name, type, defaultValue] of columns) {
      if (existing.includes(name)) continue;
      await this.db.schema.alterTable(table).addColumn(name, type, (c) => c.notNull().defaultTo(defaultValue)).execute();
    }
  }

  /** Changes a tenant's limits (any subset). Usage above a lowered limit stays; new requests are refused. */
  async setTenantLimits(name: string, limits: Partial<TenantLimits>): Promise<Tenant> {
    const tenant = await this.tenantByName(name);
    if (!tenant) throw new TenantNotFoundError(name);
    const next = { ...tenant.limits, ...limits };
    await this.db.updateTable("tenants").set(toLimitColumns(next)).where("id", "=", tenant.id).execute();
    return (await this.tenantByName(name))!;
  }

  async listTenants(): Promise<Tenant[]> {
    const rows = await this.db.selectFrom("tenants").selectAll().orderBy("name").execute();
    return rows.map(toTenant);
  }

  async tenantByName(name: string): Promise<Tenant | undefined> {
    const row = await this.db.selectFrom("tenants").selectAll().where("name", "=", name).executeTakeFirst();
    return row && toTenant(row);
  }

  async tenantCount(): Promise<number> {
    const row = await this.db.selectFrom("tenants").select((eb) => eb.fn.countAll<number>().as("n")).executeTakeFirstOrThrow();
    return Number(row.n);
  }

  /** The tenant of that name, created with the default limits if it does not exist yet. */
  async ensureTenant(name: string, limits: TenantLimits = DEFAULT_TENANT_LIMITS): Promise<Tenant> {
    if (!tenantNamePattern.test(name)) throw new InvalidTenantNameError(name);
    await this.db
      .insertInto("tenants")
      .values({
        id: `ten_${randomBytes(8).toString("hex")}`,
        name,
        ...toLimitColumns(limits),
        created_at: Date.now(),
      })
      .onConflict((oc) => oc.column("name").doNothing())
      .execute();
    return (await this.tenantByName(name))!;
  }

  /** A new API key for the tenant (created if needed). The key itself is returned once and stored only hashed. */
  async createKey(tenantName: string): Promise<{ apiKey: string; keyId: string; tenant: string }> {
    const tenant = await this.ensureTenant(tenantName);
    const apiKey = `${KEY_PREFIX}${randomBytes(32).toString("base64url")}`;
    const keyId = `key_${randomBytes(8).toString("hex")}`;
    await this.db
      .insertInto("api_keys")
      .values({ id: keyId, tenant_id: tenant.id, key_hash: hashKey(apiKey), prefix: apiKey.slice(0, 10), created_at: Date.now(), revoked_at: null })
      .execute();
    return { apiKey, keyId, tenant: tenant.name };
  }

  async listKeys(): Promise<ApiKeyInfo[]> {
    const rows = await this.db
      .selectFrom("api_keys")
      .innerJoin("tenants", "tenants.id", "api_keys.tenant_id")
      .select(["api_keys.id", "tenants.name", "api_keys.prefix", "api_keys.created_at", "api_keys.revoked_at"])
      .orderBy("api_keys.created_at")
      .execute();
    return rows.map((r) => ({ keyId: r.id, tenant: r.name, prefix: r.prefix, createdAt: iso(Number(r.created_at))!, revokedAt: iso(r.revoked_at === null ? null : Number(r.revoked_at)) }));
  }

  /** Revokes a key by its id; a revoked key is refused from then on. Revoking twice is not an error. */
  async revokeKey(keyId: string): Promise<void> {
    const result = await this.db
      .updateTable("api_keys")
      .set({ revoked_at: sql<number>`coalesce(revoked_at, ${Date.now()})` })
      .where("id", "=", keyId)
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) === 0) throw new KeyNotFoundError(keyId);
  }

  /** The tenant an API key belongs to, or undefined for an unknown or revoked key. */
  async authenticate(apiKey: string): Promise<Tenant | undefined> {
    return (await this.authenticateKey(apiKey))?.tenant;
  }

  /** The tenant and key id of an API key, or undefined for an unknown or revoked key. */
  async authenticateKey(apiKey: string): Promise<Authenticated | undefined> {
    if (!apiKey.startsWith(KEY_PREFIX) || apiKey.length > 200) return undefined;
    const row = await this.db
      .selectFrom("api_keys")
      .innerJoin("tenants", "tenants.id", "api_keys.tenant_id")
      .selectAll("tenants")
      .select("api_keys.id as key_id")
      .where("api_keys.key_hash", "=", hashKey(apiKey))
      .where("api_keys.revoked_at", "is", null)
      .executeTakeFirst();
    return row && { tenant: toTenant(row), keyId: row.key_id };
  }

  /** Which of these keys are revoked (or gone): one query, however many streams are open with them. */
  async revokedKeyIds(keyIds: string[]): Promise<Set<string>> {
    if (keyIds.length === 0) return new Set();
    const valid = await this.db.selectFrom("api_keys").select("id").where("id", "in", keyIds).where("revoked_at", "is", null).execute();
    const validIds = new Set(valid.map((row) => row.id));
    return new Set(keyIds.filter((id) => !validIds.has(id)));
  }

  /**
   * Tenants locked out: they have keys, every one of them is revoked, and the last revocation is at or before
   * `revokedBefore` (a grace period ago). A tenant given a new key is no longer one.
   */
  async lockedOutTenantIds(revokedBefore: number): Promise<string[]> {
    const rows = await this.db
      .selectFrom("api_keys")
      .select("tenant_id")
      .groupBy("tenant_id")
      // count(revoked_at) counts the revoked keys only: equal to count(id), every key of the tenant is revoked.
      .having((eb) => eb(eb.fn.count("id"), "=", eb.fn.count("revoked_at")))
      .having((eb) => eb(eb.fn.max("revoked_at"), "<=", revokedBefore))
      .execute();
    return rows.map((row) => row.tenant_id);
  }

  // ——— sandboxes and snapshots by tenant ———

  async recordSandbox(row: SandboxOwnerRow): Promise<void> {
    // Spelled out, so that a row copied from another (a fork's, from its source's) never brings its ended_at along.
    const { ended_at: _copied, ...fields } = row as SandboxOwnerRow & { ended_at?: unknown };
    await this.db.insertInto("sandbox_owners").values({ ...fields, ended_at: null }).execute();
  }

  /** The sandbox's record if `tenantId` owns it; another tenant's sandbox is indistinguishable from none. */
  async ownedSandbox(tenantId: string, sandboxId: string): Promise<SandboxOwnerRow | undefined> {
    return this.db.selectFrom("sandbox_owners").selectAll().where("tenant_id", "=", tenantId).where("sandbox_id", "=", sandboxId).executeTakeFirst();
  }

  /** Who owns a sandbox (for the server's own bookkeeping, never for a tenant's request). */
  async ownedSandboxAnyTenant(sandboxId: string): Promise<SandboxOwnerRow | undefined> {
    return this.db.selectFrom("sandbox_owners").selectAll().where("sandbox_id", "=", sandboxId).executeTakeFirst();
  }

  /** The tenant's sandboxes, newest first, after a cursor position; at most `limit` of them (default all). */
  async ownedSandboxes(tenantId: string, after?: { createdAt: number; sandboxId: string }, limit?: number): Promise<SandboxOwnerRow[]> {
    let query = this.db.selectFrom("sandbox_owners").selectAll().where("tenant_id", "=", tenantId);
    if (limit !== undefined) query = query.limit(limit);
    if (after) {
      query = query.where((eb) =>
        eb.or([eb("created_at", "<", after.createdAt), eb.and([eb("created_at", "=", after.createdAt), eb("sandbox_id", "<", after.sandboxId)])]),
      );
    }
    return query.orderBy("created_at", "desc").orderBy("sandbox_id", "desc").execute();
  }

  // ——— sandbox networks ———

  async saveNetworkConfig(sandboxId: string, config: string): Promise<void> {
    await this.db
      .insertInto("sandbox_networks")
      .values({ sandbox_id: sandboxId, config })
      .onConflict((oc) => oc.column("sandbox_id").doUpdateSet({ config }))
      .execute();
  }

  async networkConfigs(): Promise<Array<{ sandboxId: string; config: string }>> {
    const rows = await this.db.selectFrom("sandbox_networks").selectAll().execute();
    return rows.map((row) => ({ sandboxId: row.sandbox_id, config: row.config }));
  }

  async removeNetworkConfig(sandboxId: string): Promise<void> {
    await this.db.deleteFrom("sandbox_networks").where("sandbox_id", "=", sandboxId).execute();
  }

  /** Ids of the sandboxes not yet seen ended: the ones a sweep asks the engine about. */
  async sandboxesNotEnded(): Promise<string[]> {
    return (await this.db.selectFrom("sandbox_owners").select("sandbox_id").where("ended_at", "is", null).execute()).map((row) => row.sandbox_id);
  }

  /** A tenant's sandboxes not yet seen ended (a locked-out tenant's: the ones to stop). */
  async tenantSandboxesNotEnded(tenantId: string): Promise<string[]> {
    const rows = await this.db.selectFrom("sandbox_owners").select("sandbox_id").where("tenant_id", "=", tenantId).where("ended_at", "is", null).execute();
    return rows.map((row) => row.sandbox_id);
  }

  /** Records when a sandbox was seen ended (only the first time: a later sweep keeps the earlier time). */
  async markSandboxEnded(sandboxId: string, endedAt: number): Promise<void> {
    await this.db.updateTable("sandbox_owners").set({ ended_at: endedAt, timeout_at: null }).where("sandbox_id", "=", sandboxId).where("ended_at", "is", null).execute();
  }

  /** Every snapshot owner row's snapshot id: the caller drops those whose snapshot is gone. */
  async ownedSnapshotIds(): Promise<string[]> {
    return (await this.db.selectFrom("snapshot_owners").select("snapshot_id").execute()).map((row) => row.snapshot_id);
  }

  /**
   * Removes the records of sandboxes that ended at or before `endedBefore` — owner row and network settings — except
   * those a snapshot owner row still names (a fork from that snapshot takes its shape from the source's row).
   * Returns the ids pruned.
   */
  async pruneEndedSandboxes(endedBefore: number): Promise<string[]> {
    return this.db.transaction().execute(async (trx) => {
      const rows = await trx
        .selectFrom("sandbox_owners")
        .select("sandbox_id")
        .where("ended_at", "is not", null)
        .where("ended_at", "<=", endedBefore)
        .where((eb) => eb.not(eb.exists(eb.selectFrom("snapshot_owners").select("snapshot_id").whereRef("snapshot_owners.sandbox_id", "=", "sandbox_owners.sandbox_id"))))
        .execute();
      const ids = rows.map((row) => row.sandbox_id);
      if (ids.length > 0) {
        await trx.deleteFrom("sandbox_networks").where("sandbox_id", "in", ids).execute();
        await trx.deleteFrom("sandbox_owners").where("sandbox_id", "in", ids).execute();
      }
      return ids;
    });
  }

  async setSandboxTimeout(sandboxId: string, timeoutAt: number | null): Promise<void> {
    await this.db.updateTable("sandbox_owners").set({ timeout_at: timeoutAt }).where("sandbox_id", "=", sandboxId).execute();
  }

  /** Sandboxes whose timeout has passed (the caller checks whether they still run). */
  async timedOutSandboxes(now: number): Promise<SandboxOwnerRow[]> {
    return this.db.selectFrom("sandbox_owners").selectAll().where("timeout_at", "is not", null).where("timeout_at", "<=", now).execute();
  }

  async recordSnapshot(snapshotId: string, tenantId: string, sandboxId: string): Promise<void> {
    await this.db.insertInto("snapshot_owners").values({ snapshot_id: snapshotId, tenant_id: tenantId, sandbox_id: sandboxId, created_at: Date.now() }).execute();
  }

  async ownedSnapshot(tenantId: string, snapshotId: string): Promise<ControlTables["snapshot_owners"] | undefined> {
    return this.db.selectFrom("snapshot_owners").selectAll().where("tenant_id", "=", tenantId).where("snapshot_id", "=", snapshotId).executeTakeFirst();
  }

  async ownedSnapshots(tenantId: string): Promise<Array<ControlTables["snapshot_owners"]>> {
    return this.db.selectFrom("snapshot_owners").selectAll().where("tenant_id", "=", tenantId).orderBy("created_at", "desc").execute();
  }

  async forgetSnapshot(snapshotId: string): Promise<void> {
    await this.db.deleteFrom("snapshot_owners").where("snapshot_id", "=", snapshotId).execute();
  }

  // ——— templates ———

  async templateSnapshot(name: string, version: number, cpus: number, memoryMB: number): Promise<string | undefined> {
    const row = await this.db
      .selectFrom("templates")
      .select("snapshot_id")
      .where("name", "=", name)
      .where("version", "=", version)
      .where("cpus", "=", cpus)
      .where("memory_mb", "=", memoryMB)
      .executeTakeFirst();
    return row?.snapshot_id;
  }

  async recordTemplate(name: string, version: number, cpus: number, memoryMB: number, snapshotId: string): Promise<void> {
    await this.db
      .insertInto("templates")
      .values({ name, version, cpus, memory_mb: memoryMB, snapshot_id: snapshotId, created_at: Date.now(), last_used_at: Date.now() })
      .onConflict((oc) => oc.columns(["name", "version", "cpus", "memory_mb"]).doUpdateSet({ snapshot_id: snapshotId, last_used_at: Date.now() }))
      .execute();
  }

  async markTemplateUsed(snapshotId: string, at = Date.now()): Promise<void> {
    await this.db.updateTable("templates").set({ last_used_at: at }).where("snapshot_id", "=", snapshotId).execute();
  }

  /** Every template shape with when it was last used. */
  async templateShapes(): Promise<Array<ControlTables["templates"]>> {
    return this.db.selectFrom("templates").selectAll().execute();
  }

  async forgetTemplate(snapshotId: string): Promise<void> {
    await this.db.deleteFrom("templates").where("snapshot_id", "=", snapshotId).execute();
  }
}

function toTenant(row: ControlTables["tenants"]): Tenant {
  return {
    id: row.id,
    name: row.name,
    limits: {
      maxSandboxes: Number(row.max_sandboxes),
      maxCpus: Number(row.max_cpus),
      maxMemoryMB: Number(row.max_memory_mb),
      maxTotalCpus: Number(row.max_total_cpus),
      maxTotalMemoryMB: Number(row.max_total_memory_mb),
      maxDiskMB: Number(row.max_disk_mb),
      maxTotalDiskMB: Number(row.max_total_disk_mb),
      maxSnapshots: Number(row.max_snapshots),
      maxSnapshotBytes: Number(row.max_snapshot_bytes),
    },
  };
}

function toLimitColumns(limits: TenantLimits) {
  return {
    max_sandboxes: limits.maxSandboxes,
    max_cpus: limits.maxCpus,
    max_memory_mb: limits.maxMemoryMB,
    max_total_cpus: limits.maxTotalCpus,
    max_total_memory_mb: limits.maxTotalMemoryMB,
    max_disk_mb: limits.maxDiskMB,
    max_total_disk_mb: limits.maxTotalDiskMB,
    max_snapshots: limits.maxSnapshots,
    max_snapshot_bytes: limits.maxSnapshotBytes,
  };
}
