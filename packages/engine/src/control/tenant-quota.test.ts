// Quota holds on a real SQLite file: exact limits under parallel requests, from one process and from several.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { ControlStore, DEFAULT_TENANT_LIMITS, type Tenant } from "./control-store.js";
import { QuotaExceededError } from "./tenant-quota.js";

const storeModule = fileURLToPath(new URL("./control-store.js", import.meta.url));

describe("TenantQuota (SQLite)", () => {
  let dir: string;
  let path: string;
  let store: ControlStore;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "cc-quota-"));
    path = join(dir, "control.db");
    store = await ControlStore.openSqlite(path);
  });
  after(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function tenantWith(name: string, limits: Partial<Tenant["limits"]>): Promise<Tenant> {
    await store.ensureTenant(name);
    return store.setTenantLimits(name, limits);
  }

  it("grants exactly the limit to parallel holds and names the limit it refuses", async () => {
    const tenant = await tenantWith("parallel", { maxSandboxes: 4 });
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => store.quota.hold(tenant.id, tenant.limits, { sandboxes: 1, cpus: 1, memoryMB: 512 })));
    const granted = results.filter((r) => r.status === "fulfilled");
    assert.equal(granted.length, 4);
    for (const refused of results.filter((r): r is PromiseRejectedResult => r.status === "rejected")) {
      assert.ok(refused.reason instanceof QuotaExceededError, String(refused.reason));
      assert.deepEqual(refused.reason.breach, { limit: "maxSandboxes", max: 4, used: 4, requested: 1 });
    }
    assert.deepEqual(await store.quota.usage(tenant.id), { sandboxes: 4, cpus: 4, memoryMB: 2048, diskMB: 0, snapshots: 0, snapshotBytes: 0 });
    for (const r of granted) await store.quota.release((r as PromiseFulfilledResult<string>).value);
    assert.deepEqual(await store.quota.usage(tenant.id), { sandboxes: 0, cpus: 0, memoryMB: 0, diskMB: 0, snapshots: 0, snapshotBytes: 0 });
  });

  it("refuses a hold over any one total and takes nothing of the others", async () => {
    const tenant = await tenantWith("totals", { maxTotalMemoryMB: 1024, maxTotalCpus: 3 });
    await store.quota.hold(tenant.id, tenant.limits, { sandboxes: 1, cpus: 2, memoryMB: 512 });
    await assert.rejects(store.quota.hold(tenant.id, tenant.limits, { sandboxes: 1, cpus: 2, memoryMB: 256 }), (e: QuotaExceededError) => e.breach.limit === "maxTotalCpus");
    await assert.rejects(store.quota.hold(tenant.id, tenant.limits, { sandboxes: 1, cpus: 1, memoryMB: 1024 }), (e: QuotaExceededError) => e.breach.limit === "maxTotalMemoryMB");
    assert.deepEqual(await store.quota.usage(tenant.id), { sandboxes: 1, cpus: 2, memoryMB: 512, diskMB: 0, snapshots: 0, snapshotBytes: 0 });
  });

  it("releases a hold once, by its id or by what it was attached to", async () => {
    const tenant = await tenantWith("release", {});
    const hold = await store.quota.hold(tenant.id, tenant.limits, { sandboxes: 1, cpus: 1, memoryMB: 512 });
    await store.quota.attach(hold, "sbx-one");
    await store.quota.releaseSubject("sbx-one");
    await store.quota.releaseSubject("sbx-one");
    await store.quota.release(hold);
    assert.deepEqual(await store.quota.usage(tenant.id), { sandboxes: 0, cpus: 0, memoryMB: 0, diskMB: 0, snapshots: 0, snapshotBytes: 0 });
  });

  it("extends a hold within the byte limit and leaves it as it was when that would pass the limit", async () => {
    const tenant = await tenantWith("bytes", { maxSnapshots: 5, maxSnapshotBytes: 1000 });
    const hold = await store.quota.hold(tenant.id, tenant.limits, { snapshots: 1 });
    await store.quota.extend(hold, tenant.id, tenant.limits, { snapshotBytes: 600 });
    const second = await store.quota.hold(tenant.id, tenant.limits, { snapshots: 1 });
    await assert.rejects(store.quota.extend(second, tenant.id, tenant.limits, { snapshotBytes: 600 }), (e: QuotaExceededError) => e.breach.limit === "maxSnapshotBytes" && e.breach.used === 600);
    assert.deepEqual(await store.quota.usage(tenant.id), { sandboxes: 0, cpus: 0, memoryMB: 0, diskMB: 0, snapshots: 2, snapshotBytes: 600 });
    await store.quota.release(second);
    await store.quota.release(hold);
    assert.equal((await store.quota.usage(tenant.id)).snapshotBytes, 0);
  });

  it("keeps the limit exact when several processes take holds on one database at once", async () => {
    const tenant = await tenantWith("processes", { maxSandboxes: 3 });
    const script = `
      const { ControlStore } = await import(${JSON.stringify(storeModule)});
      const store = await ControlStore.openSqlite(${JSON.stringify(path)});
      const tenant = await store.tenantByName("processes");
      const outcomes = [];
      for (let i = 0; i < 4; i++) {
        try { await store.quota.hold(tenant.id, tenant.limits, { sandboxes: 1 }); outcomes.push("granted"); }
        catch (error) { outcomes.push(error.name); }
      }
      await store.close();
      process.stdout.write(JSON.stringify(outcomes));`;
    const runs = await Promise.all(
      Array.from({ length: 4 }, () =>
        new Promise<string[]>((resolve, reject) => {
          const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
          let out = "";
          child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
          child.on("error", reject);
          child.on("exit", (code) => (code === 0 ? resolve(JSON.parse(out) as string[]) : reject(new Error(`exit ${code}`))));
        }),
      ),
    );
    const all = runs.flat();
    assert.equal(all.filter((o) => o === "granted").length, 3, JSON.stringify(all));
    assert.equal(all.filter((o) => o === "QuotaExceededError").length, 13);
    assert.equal((await store.quota.usage(tenant.id)).sandboxes, 3);
  });

  it("gives new tenants the default limits, and an older database's tenants get the new limit columns", async () => {
    const tenant = await store.ensureTenant("defaults");
    assert.deepEqual(tenant.limits, DEFAULT_TENANT_LIMITS);
  });
});
