// The control plane's records on a real SQLite file: keys, tenants, ownership, pagination order.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
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
});
