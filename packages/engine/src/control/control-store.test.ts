// The control plane's records on a real SQLite file: keys, tenants, ownership, pagination order.
import assert from "node:assert/strict";
import Database from "better-sqlite3";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ControlStore, InvalidTenantNameError, KeyNotFoundError, type SandboxOwnerRow } from "./control-store.js";

describe("ControlStore (SQLite)", () => {
  let dir: string;
  let store: ControlStore;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "cc-control-"));
    store = await ControlStore.openSqlite(join(dir, "control.db"));
  });
  after(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("creates keys that authenticate their tenant, stores only their hash, and refuses them once revoked", async () => {
    const a = await store.createKey("team-a");
    const a2 = await store.createKey("team-a");
    const b = await store.createKey("team-b");
    assert.match(a.apiKey, /^cc_[A-Za-z0-9_-]{43}$/);
    assert.notEqual(a.apiKey, a2.apiKey);
    assert.equal((await store.authenticate(a.apiKey))?.name, "team-a");
    assert.equal((await store.authenticate(a2.apiKey))?.id, (await store.authenticate(a.apiKey))?.id, "one tenant, two keys");
    assert.equal((await store.authenticate(b.apiKey))?.name, "team-b");
    assert.equal(await store.authenticate(`${a.apiKey}x`), undefined);
    assert.equal(await store.authenticate("not-a-key"), undefined);
    assert.ok(!(await readFile(join(dir, "control.db"))).includes(a.apiKey), "the key is not in the database file");
    await store.revokeKey(a.keyId);
    await store.revokeKey(a.keyId); // twice is fine
    assert.equal(await store.authenticate(a.apiKey), undefined);
    assert.equal((await store.authenticate(a2.apiKey))?.name, "team-a", "other keys of the tenant still work");
    await assert.rejects(store.revokeKey("key_nope"), KeyNotFoundError);
    const listed = await store.listKeys();
    assert.deepEqual(listed.map((k) => [k.tenant, k.revokedAt !== null]), [["team-a", true], ["team-a", false], ["team-b", false]]);
  });

  it("refuses tenant names that are not simple identifiers", async () => {
    for (const name of ["", "Team", "a b", "../x", "x".repeat(64), "-lead"]) {
      await assert.rejects(store.createKey(name), InvalidTenantNameError, name);
    }
  });

  it("scopes sandboxes to their tenant and pages newest first without repeats", async () => {
    const a = (await store.ensureTenant("team-a")).id;
    const b = (await store.ensureTenant("team-b")).id;
    const row = (id: string, tenant: string, createdAt: number): SandboxOwnerRow => ({
      sandbox_id: id, tenant_id: tenant, template: "base@1", metadata: "{}", env: "{}", region: "r", cpus: 1, memory_mb: 512, disk_mb: 4096,
      created_at: createdAt, timeout_at: null, on_timeout: "kill",
    });
    await store.recordSandbox(row("sb-1", a, 1000));
    await store.recordSandbox(row("sb-2", a, 2000));
    await store.recordSandbox(row("sb-3", a, 2000));
    await store.recordSandbox(row("sb-4", b, 3000));
    assert.equal((await store.ownedSandbox(a, "sb-4")), undefined, "another tenant's sandbox is not found");
    assert.equal((await store.ownedSandbox(b, "sb-4"))?.sandbox_id, "sb-4");
    const all = (await store.ownedSandboxes(a)).map((r) => r.sandbox_id);
    assert.deepEqual(all, ["sb-3", "sb-2", "sb-1"]);
    const afterSecond = (await store.ownedSandboxes(a, { createdAt: 2000, sandboxId: "sb-3" })).map((r) => r.sandbox_id);
    assert.deepEqual(afterSecond, ["sb-2", "sb-1"]);
    await store.setSandboxTimeout("sb-1", 500);
    assert.deepEqual((await store.timedOutSandboxes(600)).map((r) => r.sandbox_id), ["sb-1"]);
    assert.deepEqual(await store.timedOutSandboxes(400), []);
  });

  it("makes its database file 0600 whatever the umask", async () => {
    const previous = process.umask(0o022);
    try {
      const path = join(dir, "fresh.db");
      const fresh = await ControlStore.openSqlite(path);
      await fresh.createKey("team-z");
      assert.equal((await stat(path)).mode & 0o777, 0o600);
      await fresh.close();
    } finally {
      process.umask(previous);
    }
  });

  it("names the revoked keys among those asked about, and the tenants locked out a grace period ago", async () => {
    const x1 = await store.createKey("locked-x");
    const x2 = await store.createKey("locked-x");
    const y = await store.createKey("locked-y");
    assert.equal((await store.authenticateKey(x1.apiKey))?.keyId, x1.keyId);
    await store.revokeKey(x1.keyId);
    assert.deepEqual([...(await store.revokedKeyIds([x1.keyId, x2.keyId, "key_gone"]))].sort(), [x1.keyId, "key_gone"].sort());
    const xId = (await store.tenantByName("locked-x"))!.id;
    const yId = (await store.tenantByName("locked-y"))!.id;
    assert.ok(!(await store.lockedOutTenantIds(Date.now() + 60_000)).includes(xId), "a tenant with one valid key left is not locked out");
    await store.revokeKey(x2.keyId);
    const revokedAt = Date.now();
    assert.ok((await store.lockedOutTenantIds(revokedAt + 60_000)).includes(xId), "all keys revoked, grace over");
    assert.ok(!(await store.lockedOutTenantIds(revokedAt - 60_000)).includes(xId), "all keys revoked, still in the grace period");
    assert.ok(!(await store.lockedOutTenantIds(revokedAt + 60_000)).includes(yId), "a tenant with a valid key");
    await store.createKey("locked-x");
    assert.ok(!(await store.lockedOutTenantIds(revokedAt + 60_000)).includes(xId), "a new key lets the tenant back in");
    void y;
  });

  it("prunes ended sandboxes' records after the retention, except those a snapshot still names", async () => {
    const t = (await store.ensureTenant("prune-t")).id;
    const row = (id: string): SandboxOwnerRow => ({
      sandbox_id: id, tenant_id: t, template: "base@1", metadata: "{}", env: "{}", region: "r", cpus: 1, memory_mb: 512, disk_mb: 4096,
      created_at: 1, timeout_at: 5, on_timeout: "kill",
    });
    for (const id of ["p-live", "p-old", "p-new", "p-snap"]) {
      await store.recordSandbox(row(id));
      await store.saveNetworkConfig(id, "{}");
    }
    await store.recordSnapshot("snap-1", t, "p-snap");
    await store.markSandboxEnded("p-old", 1000);
    await store.markSandboxEnded("p-old", 9000); // the first time seen ended counts
    await store.markSandboxEnded("p-snap", 1000);
    await store.markSandboxEnded("p-new", 5000);
    assert.ok(!(await store.sandboxesNotEnded()).includes("p-old"));
    assert.ok((await store.sandboxesNotEnded()).includes("p-live"));
    assert.deepEqual(await store.pruneEndedSandboxes(2000), ["p-old"]);
    assert.equal(await store.ownedSandbox(t, "p-old"), undefined);
    assert.ok(!(await store.networkConfigs()).some((c) => c.sandboxId === "p-old"), "its network settings went with it");
    assert.ok(await store.ownedSandbox(t, "p-snap"), "kept: snapshot snap-1 names it");
    assert.ok(await store.ownedSandbox(t, "p-new"), "kept: ended too recently");
    await store.forgetSnapshot("snap-1");
    assert.deepEqual((await store.pruneEndedSandboxes(6000)).sort(), ["p-new", "p-snap"]);
    // A row copied from an ended one (a fork's, from its source's) starts not ended.
    await store.recordSandbox({ ...row("p-fork"), ...{ ended_at: 1234 } } as SandboxOwnerRow);
    assert.ok((await store.sandboxesNotEnded()).includes("p-fork"));
  });

  it("adds ended_at to a database made before it existed", async () => {
    const path = join(dir, "old.db");
    const old = new Database(path);
    old.exec(`create table tenants (id text primary key, name text not null unique, max_sandboxes integer not null, max_cpus integer not null, max_memory_mb integer not null, created_at bigint not null);
      create table sandbox_owners (sandbox_id text primary key, tenant_id text not null references tenants(id), template text not null, metadata text not null, env text not null, region text not null, cpus integer not null, memory_mb integer not null, created_at bigint not null, timeout_at bigint, on_timeout text not null);
      insert into tenants values ('ten_1', 'old', 1, 1, 512, 1);
      insert into sandbox_owners values ('sb-old', 'ten_1', 'base@1', '{}', '{}', 'r', 1, 512, 1, null, 'kill');`);
    old.close();
    const migrated = await ControlStore.openSqlite(path);
    try {
      assert.deepEqual(await migrated.sandboxesNotEnded(), ["sb-old"]);
      await migrated.markSandboxEnded("sb-old", 10);
      assert.deepEqual(await migrated.pruneEndedSandboxes(10), ["sb-old"]);
    } finally {
      await migrated.close();
    }
  });
});
