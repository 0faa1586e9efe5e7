// A sandbox's env values never reach the server's disk: not control.db, its WAL, nor state.db. Commands still get
// them after a pause and resume, in a fork, and after the server is SIGKILLed and restarted (read back from the guest).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { apiCaller } from "../testing/api-caller.js";
import { startLocalServer, type LocalServer } from "../testing/local-server.js";

describe("hostile: env values are not stored by the server (real server, real VMs)", () => {
  let server: LocalServer;
  let call: ReturnType<typeof apiCaller>;
  let key: string;
  const secret = `s3cr3t-${randomBytes(12).toString("hex")}`;

  const serverFilesHolding = (value: string) =>
    ["control.db", "control.db-wal", "state.db", "state.db-wal"]
      .map((name) => join(server.home, name))
      .filter((path) => existsSync(path) && readFileSync(path).includes(value));
  const echoSecret = async (sandboxId: string) => (await call("POST", `/v1/sandboxes/${sandboxId}/commands`, key, { cmd: 'printf %s "$API_TOKEN"' })).body.stdout;

  before(async () => {
    server = await startLocalServer({ prefix: "cchostile-env-" });
    call = apiCaller(server.url);
    key = await server.createKey("env-owner");
  });
  after(() => server?.stop());

  it("gives every command the env while no server file holds its values", async () => {
    const created = await call("POST", "/v1/sandboxes", key, { env: { API_TOKEN: secret } });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id = created.body.sandboxId as string;
    assert.equal(await echoSecret(id), secret);
    const override = await call("POST", `/v1/sandboxes/${id}/commands`, key, { cmd: 'printf %s "$API_TOKEN"', env: { API_TOKEN: "mine" } });
    assert.equal(override.body.stdout, "mine", "a command's own env wins");
    assert.deepEqual(serverFilesHolding(secret), []);

    assert.equal((await call("POST", `/v1/sandboxes/${id}/pause`, key)).status, 200);
    assert.equal((await call("POST", `/v1/sandboxes/${id}/resume`, key)).status, 200);
    assert.equal(await echoSecret(id), secret, "after pause and resume");

    const forked = await call("POST", `/v1/sandboxes/${id}/fork`, key, { count: 1 });
    assert.equal(forked.status, 201, JSON.stringify(forked.body));
    const forkId = forked.body.sandboxes[0].sandboxId as string;
    assert.equal(await echoSecret(forkId), secret, "a fork has its source's env");

    await server.restartAfterCrash();
    assert.equal(await echoSecret(id), secret, "after a server restart, read back from the guest");
    assert.equal(await echoSecret(forkId), secret);
    assert.deepEqual(serverFilesHolding(secret), [], "still in no server file");
    const other = await call("POST", "/v1/sandboxes", key, {});
    assert.equal(await echoSecret(other.body.sandboxId), "", "a sandbox made without env has none");
    for (const sandbox of [id, forkId, other.body.sandboxId as string]) await call("DELETE", `/v1/sandboxes/${sandbox}`, key);
  });
});
