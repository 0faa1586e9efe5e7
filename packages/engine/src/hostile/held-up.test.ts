// What held up in the review, kept in the suite so it keeps holding: another tenant's ids on every per-id route
// (read from /openapi.json, so a new route is covered the day it is added), guest paths aimed at the host, a fork
// bomb, a memory hog, a disk filled to the last block and a watch over 20,000 new files. After each: the server
// answers another tenant, and nothing of the attacker's is left on the host once it is killed.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { apiCaller, eventually } from "../testing/api-caller.js";
import { startLocalServer, type LocalServer } from "../testing/local-server.js";
import { engineTag } from "../network/host-network.js";
import { runTool } from "../util/run-tool.js";

/** A JSON body each route accepts, so that only the tenant check can refuse it (keyed "METHOD /path/{param}"). */
const VALID_BODIES: Record<string, unknown> = {
  "POST /v1/sandboxes/{sandboxId}/timeout": { timeoutMs: 60_000 },
  "POST /v1/sandboxes/{sandboxId}/commands": { cmd: "true" },
  "POST /v1/sandboxes/{sandboxId}/fork": { count: 1 },
  "POST /v1/sandboxes/{sandboxId}/files/mkdir": { path: "/root/intruder" },
  "POST /v1/sandboxes/{sandboxId}/files/remove": { path: "/root/owned.txt" },
  "POST /v1/sandboxes/{sandboxId}/files/rename": { from: "/root/owned.txt", to: "/root/stolen.txt" },
  "POST /v1/sandboxes/{sandboxId}/files/chmod": { path: "/root/owned.txt", mode: 511 },
  "POST /v1/sandboxes/{sandboxId}/files/uploads": { path: "/root/intruder.txt" },
  "POST /v1/sandboxes/{sandboxId}/processes": { cmd: "true" },
  "POST /v1/sandboxes/{sandboxId}/processes/{pid}/signal": { signal: "SIGKILL" },
  "POST /v1/sandboxes/{sandboxId}/processes/{pid}/resize": { rows: 24, cols: 80 },
  "PUT /v1/sandboxes/{sandboxId}/network/policy": { internet: true, allow: [], deny: [] },
  "POST /v1/sandboxes/{sandboxId}/network/policy": { internet: true },
  "POST /v1/sandboxes/{sandboxId}/network/tunnels": { name: "intruder", target: "127.0.0.1:1" },
  "POST /v1/sandboxes/{sandboxId}/network/exposed": { port: 8080 },
};
/** Routes that take raw bytes. */
const OCTET_BODIES = new Set([
  "PUT /v1/sandboxes/{sandboxId}/files/content",
  "PUT /v1/sandboxes/{sandboxId}/files/uploads/{uploadId}",
  "POST /v1/sandboxes/{sandboxId}/processes/{pid}/stdin",
]);
/** Query strings the routes need. */
const QUERIES: Record<string, string> = {
  "/v1/sandboxes/{sandboxId}/files/content": "?path=/root/owned.txt",
  "/v1/sandboxes/{sandboxId}/files/stat": "?path=/root/owned.txt",
  "/v1/sandboxes/{sandboxId}/files/list": "?path=/root",
  "/v1/sandboxes/{sandboxId}/files/watch": "?path=/root",
  "/v1/sandboxes/{sandboxId}/files/uploads/{uploadId}": "?offset=0",
  "/v1/sandboxes/{sandboxId}/files/uploads/{uploadId}/complete": "?size=0",
};

describe("hostile: what held up stays held (real server, real VMs)", () => {
  let server: LocalServer;
  let call: ReturnType<typeof apiCaller>;
  let owner: string;
  let intruder: string;
  let bystander: string;

  const run = async (key: string, sandboxId: string, cmd: string, timeoutMs = 120_000) => {
    const answer = await call("POST", `/v1/sandboxes/${sandboxId}/commands`, key, { cmd, timeoutMs });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    return answer.body as { exitCode: number; stdout: string; stderr: string; timedOut: boolean };
  };
  const create = async (key: string) => {
    const created = await call("POST", "/v1/sandboxes", key, {});
    assert.equal(created.status, 201, JSON.stringify(created.body));
    return created.body.sandboxId as string;
  };
  const bystanderStillServed = async () => {
    const id = await create(bystander);
    assert.equal((await run(bystander, id, "true")).exitCode, 0);
    assert.equal((await call("DELETE", `/v1/sandboxes/${id}`, bystander)).status, 204);
  };
  const serverFds = () => readdirSync(`/proc/${serverPid()}/fd`).length;
  const serverPid = () => server.pid();
  const qemuRunDirs = () => readdirSync(join(server.home, "run")).filter((name) => name.startsWith("vm-"));

  before(async () => {
    server = await startLocalServer({ prefix: "cchostile-held-" });
    call = apiCaller(server.url);
    owner = await server.createKey("owner");
    intruder = await server.createKey("intruder");
    bystander = await server.createKey("bystander");
  });
  after(() => server?.stop());

  it("answers another tenant's ids with 404 on every per-id route, and changes nothing", async () => {
    const sandboxId = await create(owner);
    await run(owner, sandboxId, "echo mine > /root/owned.txt");
    const process = await call("POST", `/v1/sandboxes/${sandboxId}/processes`, owner, { cmd: "sleep 600", keepStdinOpen: true });
    assert.equal(process.status, 201, JSON.stringify(process.body));
    const upload = await call("POST", `/v1/sandboxes/${sandboxId}/files/uploads`, owner, { path: "/root/upload.txt" });
    assert.equal(upload.status, 201, JSON.stringify(upload.body));
    const snapshot = await call("POST", `/v1/sandboxes/${sandboxId}/snapshot`, owner);
    assert.equal(snapshot.status, 201, JSON.stringify(snapshot.body));
    const values: Record<string, string> = {
      sandboxId,
      pid: String(process.body.pid),
      uploadId: upload.body.uploadId,
      snapshotId: snapshot.body.snapshotId,
      name: "owned",
      port: "8080",
    };
    const openapi = (await call("GET", "/openapi.json", undefined)).body as { paths: Record<string, Record<string, unknown>> };
    let tried = 0;
    for (const [template, methods] of Object.entries(openapi.paths)) {
      if (!template.includes("{")) continue;
      for (const method of Object.keys(methods).map((m) => m.toUpperCase())) {
        const key = `${method} ${template}`;
        const path = template.replace(/\{(\w+)\}/g, (_, name: string) => {
          assert.ok(values[name] !== undefined, `no value for {${name}} in ${template}`);
          return encodeURIComponent(values[name]!);
        });
        const url = `${server.url}${path}${QUERIES[template] ?? ""}`;
        const octet = OCTET_BODIES.has(key);
        const body = octet ? "x" : method === "GET" || method === "DELETE" ? undefined : JSON.stringify(VALID_BODIES[key] ?? {});
        const response = await fetch(url, {
          method,
          headers: { authorization: `Bearer ${intruder}`, ...(body === undefined ? {} : { "content-type": octet ? "application/octet-stream" : "application/json" }) },
          body,
          signal: AbortSignal.timeout(30_000),
        });
        const text = await response.text();
        assert.equal(response.status, 404, `${key} as another tenant: ${response.status} ${text.slice(0, 300)}`);
        assert.equal((JSON.parse(text) as { error: { code: string } }).error.code, "not_found", key);
        tried++;
      }
    }
    assert.ok(tried >= 40, `only ${tried} per-id routes`);
    // Nothing of the owner's changed.
    assert.equal((await call("GET", `/v1/sandboxes/${sandboxId}`, owner)).body.state, "running");
    assert.equal((await run(owner, sandboxId, "cat /root/owned.txt; stat -c %a /root/owned.txt; ls /root")).stdout, "mine\n644\nowned.txt\n");
    assert.equal((await call("GET", `/v1/sandboxes/${sandboxId}/processes/${values.pid}`, owner)).body.running, true);
    assert.equal((await call("GET", `/v1/sandboxes/${sandboxId}/files/uploads/${values.uploadId}`, owner)).body.received, 0);
    assert.equal((await call("GET", "/v1/snapshots", owner)).body.snapshots.length, 1);
    const network = (await call("GET", `/v1/sandboxes/${sandboxId}/network`, owner)).body;
    if (network?.policy) assert.equal(network.policy.internet, false, "the policy is the owner's");
    await call("DELETE", `/v1/snapshots/${values.snapshotId}`, owner);
    await call("DELETE", `/v1/sandboxes/${sandboxId}`, owner);
  });

  it("resolves every file path in the guest: nothing of the host is reachable through the files API", async () => {
    const marker = join("/tmp", `cc-host-marker-${randomBytes(6).toString("hex")}`);
    const secret = randomBytes(16).toString("hex");
    writeFileSync(marker, secret);
    try {
      const sandboxId = await create(intruder);
      const guestMarker = randomBytes(8).toString("hex");
      await run(intruder, sandboxId, `ln -s / /root/rootlink; ln -s ${marker} /root/markerlink; echo ${guestMarker} > /guest-marker`);
      for (const path of [marker, `../../../../../../..${marker}`, `/root/../../..${marker}`, "/root/markerlink", `/root/rootlink${marker}`, `/proc/1/root${marker}`]) {
        const answer = await call("GET", `/v1/sandboxes/${sandboxId}/files/content?path=${encodeURIComponent(path)}`, intruder);
        assert.notEqual(answer.status, 200, `${path} was readable`);
        assert.ok(!JSON.stringify(answer.body ?? "").includes(secret), `${path} leaked the host's file`);
      }
      const throughLink = await fetch(`${server.url}/v1/sandboxes/${sandboxId}/files/content?path=/root/rootlink/guest-marker`, { headers: { authorization: `Bearer ${intruder}` } });
      assert.equal((await throughLink.text()).trim(), guestMarker, "a symlink to / is the guest's /");
      await call("DELETE", `/v1/sandboxes/${sandboxId}`, intruder);
    } finally {
      rmSync(marker, { force: true });
    }
  });

  it("serves another tenant while a guest runs a fork bomb, then a memory hog; killing the sandbox ends either", async () => {
    const fdsBefore = serverFds();
    // A fork bomb can leave its guest too busy to answer (nothing in the guest limits its processes); the guest's OOM
    // killer ends a memory hog, and its sandbox goes on.
    const attacks = [
      { what: "fork bomb", cmd: "timeout 30 bash -c 'b() { b | b & }; b' >/dev/null 2>&1", guestEndsIt: false },
      { what: "memory hog", cmd: "head -c 2000000000 /dev/zero | tail >/dev/null 2>&1", guestEndsIt: true },
    ];
    for (const { what, cmd, guestEndsIt } of attacks) {
      const sandboxId = await create(intruder);
      const started = await call("POST", `/v1/sandboxes/${sandboxId}/processes`, intruder, { cmd, timeoutMs: 120_000 });
      assert.equal(started.status, 201, JSON.stringify(started.body));
      await new Promise((resolve) => setTimeout(resolve, 5000));
      await bystanderStillServed();
      if (guestEndsIt) {
        const ended = await eventually(async () => (await call("GET", `/v1/sandboxes/${sandboxId}/processes/${started.body.pid}`, intruder)).body?.running === false, 240_000);
        assert.ok(ended, `the ${what} ended in the guest`);
        assert.equal((await run(intruder, sandboxId, "echo alive")).stdout, "alive\n", `the sandbox answers after the ${what}`);
      }
      const vmsBefore = qemuRunDirs().length;
      assert.equal((await call("DELETE", `/v1/sandboxes/${sandboxId}`, intruder)).status, 204);
      assert.ok(await eventually(() => qemuRunDirs().length < vmsBefore, 30_000), `the ${what}'s VM is gone`);
    }
    assert.ok(serverFds() < fdsBefore + 50, `server fds ${fdsBefore} → ${serverFds()}`);
  });

  it("lets a guest fill its disk to the last block, and the host holds no more than the disk's size for it", async () => {
    const sandboxId = await create(intruder);
    const layersBytes = () => readdirSync(join(server.home, "disks")).reduce((sum, name) => sum + statSync(join(server.home, "disks", name)).blocks * 512, 0);
    const before = layersBytes();
    const filled = await run(intruder, sandboxId, "dd if=/dev/zero of=/root/fill bs=1M 2>&1 | tail -1; df -BM --output=avail / | tail -1", 600_000);
    assert.match(filled.stdout, /No space left|copied/, filled.stdout);
    const sizeMB = (await call("GET", `/v1/sandboxes/${sandboxId}`, intruder)).body.diskMB as number;
    const hostBytes = layersBytes() - before;
    assert.ok(hostBytes > 0.5 * sizeMB * 1024 * 1024, `the fill reached the host's layer (${hostBytes} bytes)`);
    assert.ok(hostBytes <= sizeMB * 1024 * 1024 * 1.02 + 64 * 1024 * 1024, `${hostBytes} bytes on the host for a ${sizeMB} MB disk`);
    await bystanderStillServed();
    assert.equal((await call("DELETE", `/v1/sandboxes/${sandboxId}`, intruder)).status, 204);
  });

  it("delivers or reports the overflow of a watch over 20,000 new files without holding them all", async () => {
    const sandboxId = await create(intruder);
    await run(intruder, sandboxId, "mkdir -p /root/many");
    const controller = new AbortController();
    const response = await fetch(`${server.url}/v1/sandboxes/${sandboxId}/files/watch?path=/root/many&recursive=true`, {
      headers: { authorization: `Bearer ${intruder}` },
      signal: controller.signal,
    });
    assert.equal(response.status, 200);
    let lines = 0;
    let overflow = false;
    const reading = (async () => {
      const decoder = new TextDecoder();
      let buffered = "";
      try {
        for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
          buffered += decoder.decode(chunk, { stream: true });
          const parts = buffered.split("\n");
          buffered = parts.pop() ?? "";
          for (const part of parts) {
            if (part === "") continue;
            lines++;
            if (part.includes('"overflow"')) overflow = true;
          }
        }
      } catch {
        // Aborted below.
      }
    })();
    const rssBefore = serverRssMB();
    await run(intruder, sandboxId, "cd /root/many && seq 1 20000 | xargs touch", 300_000);
    await eventually(() => overflow || lines >= 20_000, 120_000);
    controller.abort();
    await reading;
    assert.ok(overflow || lines >= 20_000, `saw ${lines} events and no overflow`);
    assert.ok(serverRssMB() < rssBefore + 300, `server RSS ${rssBefore} → ${serverRssMB()} MB`);
    await bystanderStillServed();
    assert.equal((await call("DELETE", `/v1/sandboxes/${sandboxId}`, intruder)).status, 204);
  });

  it("answers unknown template names that are also JavaScript property names with a 404", async () => {
    for (const template of ["constructor", "constructor@1", "base@0", "base@99999"]) {
      const answer = await call("POST", "/v1/sandboxes", intruder, { template });
      assert.equal(answer.status, 404, `${template}: ${JSON.stringify(answer.body)}`);
      assert.equal(answer.body.error.code, "not_found");
    }
    const proto = await call("POST", "/v1/sandboxes", intruder, { template: "__proto__" });
    assert.equal(proto.body.error.code, "bad_request", "not a template name at all");
  });

  it("leaves no VM or network namespace of a killed sandbox behind", async () => {
    // Only the warm pool's clone may remain.
    assert.ok(await eventually(() => qemuRunDirs().length <= 1, 30_000), `run dirs left: ${qemuRunDirs().join(", ")}`);
    const tag = engineTag(server.home);
    const namespaces = async () => (await runTool("ip", ["netns", "list"])).toString().split("\n").filter((line) => line.startsWith(`cc-${tag}-`));
    assert.ok(await eventually(async () => (await namespaces()).length <= 1, 30_000), `namespaces left: ${(await namespaces()).join(", ")}`);
  });

  function serverRssMB(): number {
    const status = readFileSync(`/proc/${serverPid()}/status`, "utf8");
    return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
  }
});
