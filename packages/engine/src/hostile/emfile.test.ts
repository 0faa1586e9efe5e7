// Hostile suite: a server that runs out of file descriptors (EMFILE) must stay up (issue 12). Anything a tenant can
// make the server open (VMs, their sockets and pipes, agent sessions, file and watch streams, snapshot files, its
// spawned tools) can bring it to its descriptor limit; every open, accept, pipe and spawn then fails. Node ends the
// process on an 'error' event nobody listens to and on a promise rejection nobody handles, so one such path in the
// server would take every tenant's sandboxes down with it. Here the server's soft limit is lowered to the number it
// has open while two tenants do everything that opens descriptors at once; requests may fail then, with an API
// error and not a hang, but the same process must answer every kind of request once the limit is back, and leave no
// QEMU, cgroup or network namespace behind once everything is killed.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Sandbox } from "@codecourier/sdk";
import { engineTag } from "../network/host-network.js";
import { startLocalServer, withServerLog, type LocalServer } from "../testing/local-server.js";
import { isAlive, qemuProcessesOf, vmCgroupsOf, withDescriptorsExhausted } from "../testing/server-process.js";
import { runTool } from "../util/run-tool.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
type Sdk = typeof import("@codecourier/sdk");

/** How long the server stays at its limit. */
const SQUEEZE_MS = 6000;
/**
 * Connections opened (kept alive by fetch) right before the squeeze: the requests sent during it go over them, so they
 * reach the handlers instead of failing at accept(). More than the operations started at once.
 */
const WARM_CONNECTIONS = 32;
/** A request still unanswered this long after it was sent counts as hung (generous: TCG on a shared machine). */
const REQUEST_TIMEOUT_MS = 150_000;

interface Outcome {
  operation: string;
  /** "ok", or how it failed: "api" (an error answer), "connection" (no answer: the accept failed), "hang". */
  result: "ok" | "api" | "connection" | "hang";
  detail?: string;
}

describe("hostile: the server runs out of file descriptors (EMFILE) while tenants use everything that opens them", () => {
  let sdk: Sdk;
  let server: LocalServer;
  let pid: number;
  const keys: Record<string, string> = {};
  /** Every sandbox made, so that all are killed in the end (snapshots are listed and deleted). */
  const sandboxes: Sandbox[] = [];

  const connection = (tenant: string) => ({ url: server.url, apiKey: keys[tenant]! });
  const bounded = () => ({ signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  const create = async (tenant: string) => {
    const sandbox = await sdk.createSandbox({ ...connection(tenant), ...bounded() });
    sandboxes.push(sandbox);
    return sandbox;
  };

  /** Runs one operation and says how it ended; it never throws, so many can run at once. */
  async function attempt(operation: string, work: () => Promise<unknown>): Promise<Outcome> {
    try {
      await work();
      return { operation, result: "ok" };
    } catch (error) {
      const detail = error instanceof Error ? error.message : String(error);
      // The SDK's own, or the platform's (a stream read that the AbortSignal ended).
      if (error instanceof sdk.TimeoutError || (error instanceof Error && error.name === "TimeoutError")) return { operation, result: "hang", detail };
      if (error instanceof sdk.CodeCourierError) return { operation, result: error.status === undefined ? "connection" : "api", detail: `${error.code}: ${detail}` };
      // Not the SDK's: a test bug or an assertion in `work`; reported as it is.
      return { operation, result: "api", detail: `unexpected ${String(error)}` };
    }
  }

  /** Every kind of request that opens descriptors in the server; each is checked for what it should do. */
  function everything(tenant: string, sandbox: Sandbox, tag: string): Array<Promise<Outcome>> {
    return [
      attempt(`${tag} create`, () => create(tenant)),
      attempt(`${tag} run`, async () => {
        const result = await sandbox.runCommand(`echo ${tag}`, bounded());
        assert.equal(result.stdout, `${tag}\n`);
      }),
      attempt(`${tag} write+read`, async () => {
        await sandbox.files.write(`/root/${tag}.txt`, `content ${tag}`, bounded());
        assert.equal(await sandbox.files.read(`/root/${tag}.txt`, bounded()), `content ${tag}`);
      }),
      attempt(`${tag} watch`, async () => {
        const watch = await sandbox.files.watch("/root", { ...bounded() }, () => {});
        await watch.close();
      }),
      attempt(`${tag} process output`, async () => {
        const started = await sandbox.processes.start(["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done"], bounded());
        const result = await started.wait(bounded());
        assert.equal(result.stdout, "1\n2\n3\n");
      }),
      attempt(`${tag} snapshot`, () => sandbox.snapshot(bounded())),
      attempt(`${tag} list`, () => sandbox.files.list("/root", bounded())),
    ];
  }

  before(async () => {
    sdk = await import("@codecourier/sdk");
    // No warm pool: every create restores a VM while the test looks, and after a kill no QEMU of the server is left.
    server = await startLocalServer({ prefix: "cchostile-emfile-", env: { CODECOURIER_POOL_SIZE: "0" } });
    pid = server.pid();
    keys.a = await server.createKey("tenant-a");
    keys.b = await server.createKey("tenant-b");
  });

  after(async () => {
    await Promise.all(sandboxes.map((sandbox) => sandbox.kill().catch(() => {})));
    await server?.stop();
  });

  it("stays up, the same process serves every kind of request afterwards, and nothing is leaked", async () => {
    const [a, b] = await withServerLog(server, () => Promise.all([create("a"), create("b")]));
    // A third whose QEMU dies during the squeeze (as a guest that crashes its VM would make it): its clean-up runs
    // while nothing can be opened, in code nobody awaits.
    const others = new Set(await qemuProcessesOf(server.home));
    const victim = await create("a");
    const victimQemu = (await qemuProcessesOf(server.home)).filter((p) => !others.has(p));
    assert.equal(victimQemu.length, 1, "the victim's QEMU");
    // Held open across the squeeze: a watch and a process whose output is being streamed.
    const heldWatch = await sdk.Sandbox.connect(a.sandboxId, connection("a")).then((s) => s.files.watch("/root", () => {}));
    const heldProcess = await b.processes.start(["sh", "-c", "for i in $(seq 40); do echo $i; sleep 0.25; done"]);
    const heldOutput = attempt("held process output", () => heldProcess.wait(bounded()).then((r) => assert.equal(r.exitCode, 0)));

    await Promise.all(Array.from({ length: WARM_CONNECTIONS }, () => fetch(`${server.url}/health`).then((response) => response.text())));
    const outcomes = await withDescriptorsExhausted(pid, SQUEEZE_MS, async () => {
      process.kill(victimQemu[0]!, "SIGKILL");
      const pauseResume = attempt("b pause+resume", async () => {
        await b.pause(bounded());
        await b.resume(bounded());
      });
      // Started together, so they overlap the squeeze; those still running when the limit comes back finish after.
      return Promise.all([...everything("a", a, "a"), ...everything("b", b, "b"), pauseResume, attempt("health", () => sdk.health({ url: server.url }))]);
    });
    outcomes.push(await heldOutput, await attempt("held watch close", () => heldWatch.close()));

    assert.ok(isAlive(pid), `the server died when it ran out of descriptors:\n${server.log().slice(-4000)}`);
    const summary = outcomes.map((o) => `${o.operation}: ${o.result}${o.detail ? ` (${o.detail.slice(0, 200)})` : ""}`).join("\n  ");
    process.stderr.write(`emfile: outcomes while out of descriptors:\n  ${summary}\n`);
    const hung = outcomes.filter((o) => o.result === "hang");
    assert.deepEqual(hung, [], `requests hung instead of failing:\n  ${summary}`);
    // A failure says what it is (503 unavailable: out of descriptors, retry), not "internal error".
    const unexplained = outcomes.filter((o) => o.result === "api" && !o.detail?.startsWith("unavailable:"));
    assert.deepEqual(unexplained, [], `failures without a clear API error:\n  ${summary}`);

    // The same process, every kind of request, for both tenants; the victim is known to be lost.
    await sleep(1000);
    assert.equal(server.pid(), pid);
    assert.equal((await victim.info(bounded())).state, "lost");
    await withServerLog(server, async () => {
      assert.equal((await sdk.health({ url: server.url })).ok, true);
      for (const [tenant, sandbox] of [
        ["a", a],
        ["b", b],
      ] as const) {
        const again = await Promise.all(everything(tenant, sandbox, `${tenant}-after`));
        assert.deepEqual(again.filter((o) => o.result !== "ok"), [], `${tenant}: after the squeeze`);
      }
      await b.pause(bounded());
      await b.resume(bounded());
      assert.equal((await b.runCommand("echo resumed", bounded())).stdout, "resumed\n");
      const forks = await a.fork(1, bounded());
      sandboxes.push(...forks);
      assert.equal((await forks[0]!.runCommand("cat /root/a-after.txt", bounded())).stdout, "content a-after");
    });

    // Killed: every sandbox of both tenants (also those created while the server failed to answer: listed).
    for (const tenant of ["a", "b"]) {
      for (const info of (await sdk.listSandboxes({}, connection(tenant))).sandboxes) {
        if (info.state === "running" || info.state === "paused") await (await sdk.Sandbox.get(info.sandboxId, connection(tenant))).kill();
      }
      for (const snapshot of await sdk.listSnapshots(connection(tenant))) await sdk.deleteSnapshot(snapshot.snapshotId, connection(tenant));
    }
    assert.ok(isAlive(pid));
    const tag = engineTag(server.home);
    const deadline = Date.now() + 30_000;
    let leftovers: string[];
    do {
      await sleep(500);
      const namespaces = (await runTool("ip", ["netns", "list"])).toString().split("\n").filter((line) => line.startsWith(`cc-${tag}-sbx`));
      leftovers = [
        ...(await qemuProcessesOf(server.home)).map((p) => `qemu ${p}`),
        ...(await vmCgroupsOf(server.home)).map((c) => `cgroup ${c}`),
        ...namespaces.map((n) => `netns ${n}`),
      ];
    } while (leftovers.length > 0 && Date.now() < deadline);
    assert.deepEqual(leftovers, [], "left behind after every sandbox was killed");
  });
});
