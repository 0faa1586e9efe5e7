// Hostile tenants against a real server with real VMs: parallel creates racing the sandbox limit, totals of vCPUs
// and RAM, a new VM shape per request, snapshots past their count and bytes, a guest flooding its serial console.
// Afterwards: limits exact, everything given back, and another tenant's runCommand("true") still answers.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { apiCaller, eventually, type ApiAnswer } from "../testing/api-caller.js";
import { startLocalServer, type LocalServer } from "../testing/local-server.js";

const CONSOLE_BOUND = 64 * 1024;
const cliMain = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "cli", "bin", "codecourier.js");

describe("hostile tenants: quota, shapes, snapshots, console (real server, real VMs)", () => {
  let server: LocalServer;
  let call: ReturnType<typeof apiCaller>;
  let bystander: string;

  const cli = (...args: string[]) => {
    const result = spawnSync(process.execPath, [cliMain, ...args], { env: { ...process.env, CODECOURIER_HOME: server.home }, encoding: "utf8" });
    assert.equal(result.status, 0, `codecourier ${args.join(" ")}: ${result.stderr}`);
    return result.stdout;
  };
  const limitsOf = async (key: string) => (await call("GET", "/v1/limits", key)).body;
  const killAll = async (key: string) => {
    const live = (await call("GET", "/v1/sandboxes", key)).body.sandboxes as Array<{ sandboxId: string }>;
    for (const sandbox of live) assert.equal((await call("DELETE", `/v1/sandboxes/${sandbox.sandboxId}`, key)).status, 204);
  };
  const templateRows = () => {
    const db = new Database(join(server.home, "control.db"), { readonly: true });
    try {
      return db.prepare("select name, cpus, memory_mb from templates order by memory_mb").all() as Array<{ name: string; cpus: number; memory_mb: number }>;
    } finally {
      db.close();
    }
  };
  const pooledClones = () => {
    const db = new Database(join(server.home, "state.db"), { readonly: true });
    try {
      return (db.prepare("select count(*) as n from sandboxes where state = 'pooled'").get() as { n: number }).n;
    } finally {
      db.close();
    }
  };
  const bystanderStillServed = async () => {
    const created = await call("POST", "/v1/sandboxes", bystander, {});
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const ran = await call("POST", `/v1/sandboxes/${created.body.sandboxId}/commands`, bystander, { cmd: "true" });
    assert.equal(ran.body.exitCode, 0);
    await call("DELETE", `/v1/sandboxes/${created.body.sandboxId}`, bystander);
  };

  before(async () => {
    server = await startLocalServer({
      prefix: "cchostile-quota-",
      // One pooled shape (the default's): a new shape restores cold. Idle shape templates go after 15 s.
      // A small console bound, so that the flood passes it however slowly the emulated UART carries it.
      env: {
        CODECOURIER_POOLED_SHAPES: "1",
        CODECOURIER_TEMPLATE_IDLE_MS: "15000",
        CODECOURIER_MAINTENANCE_MS: "1000",
        CODECOURIER_CONSOLE_LOG_MAX_BYTES: String(CONSOLE_BOUND),
      },
    });
    call = apiCaller(server.url);
    bystander = await server.createKey("bystander");
  });
  after(() => server?.stop());

  it("lets 10 parallel creates with a limit of 4 and 1 live make exactly 3, and gives the quota back on kill", async () => {
    const key = await server.createKey("racer");
    cli("tenants", "limits", "racer", "--max-sandboxes", "4");
    assert.equal((await call("POST", "/v1/sandboxes", key, {})).status, 201);
    const answers: ApiAnswer[] = await Promise.all(Array.from({ length: 10 }, () => call("POST", "/v1/sandboxes", key, {})));
    const made = answers.filter((a) => a.status === 201);
    const refused = answers.filter((a) => a.status === 403);
    assert.equal(made.length, 3, JSON.stringify(answers.map((a) => a.status)));
    assert.equal(refused.length, 7);
    for (const answer of refused) {
      assert.equal(answer.body.error.code, "quota_exceeded");
      assert.deepEqual(answer.body.error.quota, { limit: "maxSandboxes", max: 4, used: 4, requested: 1 });
    }
    assert.equal((await call("GET", "/v1/sandboxes", key)).body.sandboxes.length, 4);
    const usage = (await limitsOf(key)).usage;
    assert.deepEqual([usage.sandboxes, usage.cpus, usage.memoryMB], [4, 4, 2048]);
    await killAll(key);
    assert.ok(await eventually(async () => (await limitsOf(key)).usage.sandboxes === 0, 10_000), "killed sandboxes gave their quota back");
    assert.equal((await call("POST", "/v1/sandboxes", key, {})).status, 201, "room again after the kills");
    await killAll(key);
  });

  it("bounds the vCPUs and RAM of all of a tenant's sandboxes together", async () => {
    const key = await server.createKey("totals");
    cli("tenants", "limits", "totals", "--max-total-memory-mb", "1024", "--max-total-cpus", "2");
    const first = await call("POST", "/v1/sandboxes", key, {});
    assert.equal(first.status, 201);
    const second = await call("POST", "/v1/sandboxes", key, {});
    assert.equal(second.status, 201);
    const third = await call("POST", "/v1/sandboxes", key, {});
    assert.equal(third.status, 403);
    assert.equal(third.body.error.quota.limit, "maxTotalCpus");
    const limits = await limitsOf(key);
    assert.deepEqual([limits.limits.maxTotalMemoryMB, limits.usage.memoryMB, limits.usage.cpus], [1024, 1024, 2]);
    // The SDK reports the same: the limit in QuotaError.quota, the usage from getLimits().
    const sdk = await import("@codecourier/sdk");
    const connection = { url: server.url, apiKey: key };
    await assert.rejects(sdk.createSandbox(connection), (error: unknown) => error instanceof sdk.QuotaError && error.quota?.limit === "maxTotalCpus");
    assert.equal((await sdk.getLimits(connection)).usage.sandboxes, 2);
    await killAll(key);
  });

  it("rounds every requested shape up to a fixed step: many odd sizes make one template, whose pool and template go when unused", async () => {
    const key = await server.createKey("shapes");
    const ids: string[] = [];
    for (const memoryMB of [130, 131, 200]) {
      const created = await call("POST", "/v1/sandboxes", key, { memoryMB });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      assert.equal(created.body.memoryMB, 256);
      assert.deepEqual(created.body.requested, { cpu: 1, memoryMB });
      ids.push(created.body.sandboxId);
    }
    const ran = await call("POST", `/v1/sandboxes/${ids[0]}/commands`, key, { cmd: "grep MemTotal /proc/meminfo" });
    assert.match(ran.body.stdout, /MemTotal:\s+2\d{5} kB/, "the guest has about 256 MB");
    assert.deepEqual(templateRows().map((r) => r.memory_mb), [256, 512], "one template for all three sizes");
    assert.equal(pooledClones(), 1, "only the default shape keeps a warm clone (a budget of one pooled shape)");
    const plain = await call("POST", "/v1/sandboxes", key, { memoryMB: 512 });
    assert.equal(plain.body.requested, undefined, "a shape that is a step is not reported as rounded");
    await killAll(key);
    assert.ok(await eventually(() => templateRows().length === 1, 90_000), "the unused shape's template was collected");
    assert.deepEqual(templateRows().map((r) => [r.name, r.cpus, r.memory_mb]), [["base", 1, 512]], "the default shape stays");
    const limits = await limitsOf(key);
    assert.deepEqual(limits.shapes.memoryMB.slice(0, 3), [256, 512, 1024]);
  });

  it("holds snapshots to their count and bytes, and deletes one while its source runs", async () => {
    const key = await server.createKey("snapper");
    cli("tenants", "limits", "snapper", "--max-snapshots", "2");
    const sandbox = (await call("POST", "/v1/sandboxes", key, {})).body.sandboxId as string;
    const first = await call("POST", `/v1/sandboxes/${sandbox}/snapshot`, key);
    assert.equal(first.status, 201, JSON.stringify(first.body));
    assert.equal((await call("POST", `/v1/sandboxes/${sandbox}/snapshot`, key)).status, 201);
    const third = await call("POST", `/v1/sandboxes/${sandbox}/snapshot`, key);
    assert.equal(third.status, 403);
    assert.equal(third.body.error.quota.limit, "maxSnapshots");
    const usage = (await limitsOf(key)).usage;
    assert.equal(usage.snapshots, 2);
    assert.ok(usage.snapshotBytes > 0, "snapshot bytes are counted");
    assert.equal((await call("DELETE", `/v1/snapshots/${first.body.snapshotId}`, key)).status, 204, "deleted while its source runs");
    assert.equal((await call("GET", "/v1/snapshots", key)).body.snapshots.length, 1);
    const afterDelete = (await limitsOf(key)).usage;
    assert.equal(afterDelete.snapshots, 1);
    assert.ok(afterDelete.snapshotBytes < usage.snapshotBytes);
    cli("tenants", "limits", "snapper", "--max-snapshot-bytes", String(afterDelete.snapshotBytes + 1));
    const tooBig = await call("POST", `/v1/sandboxes/${sandbox}/snapshot`, key);
    assert.equal(tooBig.status, 403);
    assert.equal(tooBig.body.error.quota.limit, "maxSnapshotBytes");
    assert.equal((await call("GET", "/v1/snapshots", key)).body.snapshots.length, 1, "the refused snapshot is not kept");
    assert.deepEqual((await limitsOf(key)).usage, { ...afterDelete, sandboxes: 1, cpus: 1, memoryMB: 512 });
    const ran = await call("POST", `/v1/sandboxes/${sandbox}/commands`, key, { cmd: "echo still" });
    assert.equal(ran.body.stdout, "still\n", "the source runs on");
    await killAll(key);
  });

  it("bounds each sandbox's disk by its size, which a create may grow within the tenant's limits", async () => {
    const key = await server.createKey("disks");
    cli("tenants", "limits", "disks", "--max-disk-mb", "8192", "--max-total-disk-mb", "12288");
    const tooBig = await call("POST", "/v1/sandboxes", key, { diskMB: 9000 });
    assert.equal(tooBig.status, 403);
    assert.equal(tooBig.body.error.quota.limit, "maxDiskMB");
    const grown = await call("POST", "/v1/sandboxes", key, { diskMB: 6000 });
    assert.equal(grown.status, 201, JSON.stringify(grown.body));
    assert.equal(grown.body.diskMB, 6144);
    assert.equal(grown.body.requested.diskMB, 6000);
    const id = grown.body.sandboxId as string;
    const rootSizeMB = async (sandboxId: string) =>
      Number((await call("POST", `/v1/sandboxes/${sandboxId}/commands`, key, { cmd: "df -BM --output=size / | tail -1" })).body.stdout.trim().replace("M", ""));
    assert.ok((await rootSizeMB(id)) > 5800, "the guest's / was grown");
    // On the host, every layer of its disk has that virtual size: the most qcow2 lets it take.
    const layers = readdirSync(join(server.home, "disks")).map((name) => join(server.home, "disks", name));
    const sizes = layers.map((path) => JSON.parse(spawnSync("qemu-img", ["info", "-U", "--output=json", path], { encoding: "utf8" }).stdout)["virtual-size"] as number);
    assert.ok(sizes.includes(6144 * 1024 * 1024), `a layer of 6 GiB among ${sizes.join(", ")}`);
    assert.ok(Math.max(...sizes) <= 6144 * 1024 * 1024);
    const defaultDisk = await call("POST", "/v1/sandboxes", key, {});
    assert.equal(defaultDisk.body.diskMB, (await limitsOf(key)).sandbox.defaultDiskMB);
    const overTotal = await call("POST", "/v1/sandboxes", key, { diskMB: 4096 });
    assert.equal(overTotal.status, 403, "6144 + 4096 + 4096 > 12288");
    assert.equal(overTotal.body.error.quota.limit, "maxTotalDiskMB");
    await call("DELETE", `/v1/sandboxes/${defaultDisk.body.sandboxId}`, key);
    const forked = await call("POST", `/v1/sandboxes/${id}/fork`, key, { count: 1 });
    assert.equal(forked.status, 201, JSON.stringify(forked.body));
    assert.equal(forked.body.sandboxes[0].diskMB, 6144);
    assert.ok((await rootSizeMB(forked.body.sandboxes[0].sandboxId)) > 5800, "a fork has its source's disk");
    assert.equal((await limitsOf(key)).usage.diskMB, 12288);
    await killAll(key);
  });

  it("keeps a guest's serial console log on the host bounded", async () => {
    const key = await server.createKey("console");
    const sandbox = (await call("POST", "/v1/sandboxes", key, {})).body.sandboxId as string;
    const line = "x".repeat(200);
    // Runs in the background: the host's bound is checked while the guest writes.
    const flood = await call("POST", `/v1/sandboxes/${sandbox}/processes`, key, { cmd: `timeout 300 sh -c 'while :; do echo ${line}; done > /dev/ttyS0'` });
    assert.equal(flood.status, 201, JSON.stringify(flood.body));
    const consoleLogs = () =>
      readdirSync(join(server.home, "run"))
        .map((dir) => join(server.home, "run", dir, "console.log"))
        .filter((path) => {
          try {
            return statSync(path).isFile();
          } catch {
            return false;
          }
        });
    let largest = 0;
    const cut = await eventually(() => {
      for (const path of consoleLogs()) largest = Math.max(largest, statSync(path).size);
      return consoleLogs().some((path) => readFileSync(path).subarray(0, 100).toString().startsWith("[console log cut:"));
    }, 240_000);
    assert.ok(cut, "the guest wrote past the bound and the log was cut");
    for (let i = 0; i < 20; i++) {
      for (const path of consoleLogs()) largest = Math.max(largest, statSync(path).size);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    // Between two checks (1 s) the UART carries well under 1 MiB.
    assert.ok(largest < CONSOLE_BOUND + 1024 * 1024, `console log reached ${largest} bytes`);
    assert.ok(largest > CONSOLE_BOUND / 4);
    assert.equal((await limitsOf(key)).sandbox.consoleLogBytes, CONSOLE_BOUND);
    await killAll(key);
  });

  it("still serves another tenant, and every hold was given back", async () => {
    await bystanderStillServed();
    for (const tenant of ["racer", "totals", "shapes", "snapper", "disks", "console"]) {
      const key = await server.createKey(tenant);
      assert.ok(await eventually(async () => (await limitsOf(key)).usage.sandboxes === 0, 10_000), `${tenant} holds nothing`);
    }
  });
});
