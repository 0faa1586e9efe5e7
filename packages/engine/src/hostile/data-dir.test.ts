// Issue 12, item 6: the data dir holds tenants' RAM (memory files), disks and the control database; another user of
// the host must not read any of it. Against a real server with real VMs: everything it and its QEMUs made is
// private; what was opened up is found at start, fixed and named in a warning; the CLI makes its files private too.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { lstatSync, readdirSync } from "node:fs";
import { chmod, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { startLocalServer, type LocalServer } from "../testing/local-server.js";

const cliMain = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "cli", "bin", "codecourier.js");

/** Every path under `dir` (symlinks not followed) whose mode lets group or others in; at most `limit` looked at. */
function openToOthers(dir: string, limit = 50_000): string[] {
  const open: string[] = [];
  const pending = [dir];
  let seen = 0;
  while (pending.length > 0 && seen++ < limit) {
    const path = pending.pop()!;
    const info = lstatSync(path, { throwIfNoEntry: false });
    if (info === undefined || info.isSymbolicLink()) continue;
    // Sockets are reached through their directory (0700); their own mode is the umask's too.
    if ((info.mode & 0o077) !== 0) open.push(`${path} ${(info.mode & 0o777).toString(8)}`);
    if (info.isDirectory()) for (const name of readdirSync(path)) pending.push(join(path, name));
  }
  return open;
}

describe("data dir permissions (real server, real VMs; hostile suite)", () => {
  let server: LocalServer;
  let key: string;
  let snapshotId: string;

  const call = async (method: string, path: string, body?: unknown) => {
    const response = await fetch(`${server.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: text === "" ? undefined : JSON.parse(text), text };
  };

  before(async () => {
    server = await startLocalServer({ prefix: "ccdatadir-" });
    key = await server.createKey("perm-test");
  });
  after(() => server?.stop());

  it("everything the server and its QEMUs made — databases, disks, memory files, run dirs — is 0600/0700", async () => {
    const created = await call("POST", "/v1/sandboxes", { template: "base" });
    assert.equal(created.status, 201, created.text);
    const id: string = created.body.sandboxId;
    assert.equal((await call("POST", `/v1/sandboxes/${id}/commands`, { cmd: "echo secret > /root/secret; sync" })).status, 200);
    const snapshot = await call("POST", `/v1/sandboxes/${id}/snapshot`);
    assert.equal(snapshot.status, 201, snapshot.text);
    snapshotId = snapshot.body.snapshotId;
    const snapshotFiles = await readdir(join(server.home, "snapshots", snapshotId));
    assert.ok(snapshotFiles.length > 0, "the snapshot has files (its memory file, device state)");
    assert.ok((await readdir(join(server.home, "run"))).length > 0, "a running VM's run dir exists");
    assert.deepEqual(openToOthers(server.home), []);
    assert.equal((await stat(join(server.home, "admin-key"))).mode & 0o777, 0o600);
    assert.ok(!server.log().includes(await server.adminKey()), "the admin key is not in the log (stderr is no terminal)");
    assert.match(server.log(), /API key for tenant "admin" is in .*admin-key/);
  });

  it("opened-up files are found at start, made private again, and named in a warning", async () => {
    const opened = [server.home, join(server.home, "control.db"), join(server.home, "snapshots"), join(server.home, "snapshots", snapshotId)];
    for (const path of opened) await chmod(path, (await stat(path)).isDirectory() ? 0o755 : 0o644);
    const memoryFiles = await readdir(join(server.home, "snapshots", snapshotId));
    await chmod(join(server.home, "snapshots", snapshotId, memoryFiles[0]!), 0o644);
    const logBefore = server.log().length;
    await server.restartAfterCrash();
    const log = server.log().slice(logBefore);
    assert.match(log, /WARNING: the data dir was readable by other users; made private/);
    assert.match(log, /control\.db: 0644 → 0600/);
    assert.match(log, new RegExp(`snapshots/${snapshotId}/${memoryFiles[0]}: 0644 → 0600`));
    assert.deepEqual(openToOthers(server.home), []);
    assert.equal((await call("GET", "/v1/sandboxes")).status, 200, "the server works on after the fix");
  });

  it("the CLI makes its control database private in a new data dir", async () => {
    const home = await mkdtemp(join(tmpdir(), "cc-cli-perm-"));
    try {
      await chmod(home, 0o755); // the operator's own choice for the dir itself; the CLI does not change it
      const result = spawnSync(process.execPath, [cliMain, "keys", "create", "--tenant", "t", "--json"], {
        env: { ...process.env, CODECOURIER_HOME: home },
        encoding: "utf8",
      });
      assert.equal(result.status, 0, result.stderr);
      const files = (await readdir(home)).filter((name) => name.startsWith("control.db"));
      assert.ok(files.includes("control.db"), files.join(","));
      for (const name of files) assert.equal((await stat(join(home, name))).mode & 0o777, 0o600, name);
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });
});
