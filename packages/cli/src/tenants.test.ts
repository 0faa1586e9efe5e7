// `codecourier tenants` on a data dir of its own (no server, no VM): limits are set on the control database.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const cliMain = join(dirname(fileURLToPath(import.meta.url)), "..", "bin", "codecourier.js");

describe("codecourier tenants", () => {
  let home: string;
  const cli = (...args: string[]) => spawnSync(process.execPath, [cliMain, ...args], { env: { ...process.env, CODECOURIER_HOME: home }, encoding: "utf8" });

  before(async () => {
    home = await mkdtemp(join(tmpdir(), "cc-tenants-"));
    assert.equal(cli("keys", "create", "--tenant", "team").status, 0);
  });
  after(() => rm(home, { recursive: true, force: true }));

  it("sets some limits, keeps the others, and lists them", () => {
    const set = cli("tenants", "limits", "team", "--max-sandboxes", "3", "--max-snapshot-bytes", "2G", "--json");
    assert.equal(set.status, 0, set.stderr);
    const limits = JSON.parse(set.stdout) as Record<string, number>;
    assert.equal(limits.maxSandboxes, 3);
    assert.equal(limits.maxSnapshotBytes, 2 * 1024 ** 3);
    assert.equal(limits.maxCpus, 8, "unchanged limits keep their defaults");
    const listed = JSON.parse(cli("tenants", "list", "--json").stdout) as Array<{ name: string; limits: Record<string, number> }>;
    assert.deepEqual(listed.map((t) => [t.name, t.limits.maxSandboxes]), [["team", 3]]);
  });

  it("refuses an unknown tenant and a malformed number with a clear message", () => {
    const unknown = cli("tenants", "limits", "nobody", "--max-sandboxes", "1");
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /no tenant named "nobody"/);
    for (const [flag, value] of [["--max-sandboxes", "3G"], ["--max-cpus", "-1"], ["--max-snapshot-bytes", "lots"]] as const) {
      const bad = cli("tenants", "limits", "team", flag, value);
      assert.equal(bad.status, 2, `${flag} ${value}: ${bad.stderr}`);
      assert.match(bad.stderr, new RegExp(flag.slice(2)));
    }
    assert.equal((JSON.parse(cli("tenants", "list", "--json").stdout) as Array<{ limits: Record<string, number> }>)[0]!.limits.maxSandboxes, 3, "nothing changed");
  });
});
