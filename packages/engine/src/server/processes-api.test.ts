// Processes through the SDK against a real server and real VMs: streamed output, background processes with stdin,
// signals, reconnect by pid (also after pause/resume), terminals, and tenant scoping.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { NotFoundError, PtyProcess, Sandbox, createSandbox, type ConnectionOptions } from "@codecourier/sdk";
import { startLocalServer, withServerLog, type LocalServer } from "../testing/local-server.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Reads a process's stdout until `pattern` shows up in it; fails after `timeoutMs`. */
async function readUntil(process: { stdout: AsyncIterable<string> }, pattern: RegExp, timeoutMs = 60_000): Promise<string> {
  let seen = "";
  const deadline = Date.now() + timeoutMs;
  for await (const text of process.stdout) {
    seen += text;
    if (pattern.test(seen)) return seen;
    if (Date.now() > deadline) break;
  }
  assert.fail(`never saw ${pattern} in the output: ${JSON.stringify(seen)}`);
}

describe("processes API (real server, real VMs)", () => {
  let server: LocalServer;
  let connA: ConnectionOptions;
  let connB: ConnectionOptions;
  let sandbox: Sandbox;

  before(async () => {
    server = await startLocalServer({ prefix: "ccproc-" });
    connA = { url: server.url, apiKey: await server.createKey("team-a") };
    connB = { url: server.url, apiKey: await server.createKey("team-b") };
    sandbox = await withServerLog(server, () => createSandbox(connA));
  });

  after(async () => {
    await sandbox?.kill().catch(() => undefined);
    await server?.stop();
  });

  it("streams a command's output piece by piece while it runs, and still returns all of it", async () => {
    const pieces: string[] = [];
    const arrivals: number[] = [];
    const result = await sandbox.runCommand("for i in 1 2 3; do echo line$i; sleep 0.5; done; echo oops >&2; exit 4", {
      onStdout: (text) => {
        pieces.push(text);
        arrivals.push(Date.now());
      },
      onStderr: (text) => pieces.push(`err:${text}`),
    });
    assert.equal(result.exitCode, 4);
    assert.equal(result.stdout, "line1\nline2\nline3\n");
    assert.equal(result.stderr, "oops\n");
    assert.equal(pieces.filter((p) => !p.startsWith("err:")).join(""), "line1\nline2\nline3\n");
    assert.ok(pieces.includes("err:oops\n"));
    assert.ok(arrivals.length >= 2, `output came in one piece: ${JSON.stringify(pieces)}`);
  });

  it("runs a background process that reads stdin sent later, then ends on EOF", async () => {
    const cat = await sandbox.runCommand(["sh", "-c", "while read -r line; do echo got:$line; done; echo done"], { background: true, keepStdinOpen: true });
    assert.match(cat.pid, /\S/);
    assert.equal((await cat.info()).running, true);
    await cat.sendStdin("hello\n");
    await cat.sendStdin(new TextEncoder().encode("world\n"));
    assert.match(await readUntil(cat, /got:world/), /got:hello\ngot:world/);
    await cat.closeStdin();
    const result = await cat.wait();
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout, "got:hello\ngot:world\ndone\n");
    assert.equal((await cat.info()).running, false);
  });

  it("kills a background process with a signal, and reconnects to one by pid from another handle", async () => {
    const sleeper = await sandbox.runCommand("echo started; exec sleep 600", { background: true });
    const again = await Sandbox.connect(sandbox.sandboxId, connA);
    const found = await again.processes.connect(sleeper.pid);
    assert.match(await readUntil(found, /started/), /started/);
    assert.ok((await again.processes.list()).some((p) => p.pid === sleeper.pid && p.running && p.command?.includes("sleep 600")));
    await found.kill("SIGTERM");
    const result = await sleeper.wait();
    assert.equal(result.signal, "SIGTERM");
    assert.equal(result.stdout, "started\n", "a late wait() still sees the output from the start");
  });

  it("a process runs on through pause and resume, and is found again by pid", async () => {
    const ticker = await sandbox.runCommand("i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.3; done", { background: true });
    await readUntil(ticker, /tick1/);
    await sandbox.pause();
    await sandbox.resume();
    const handle = await (await Sandbox.connect(sandbox.sandboxId, connA)).processes.connect(ticker.pid);
    // Output after the resume arrives on the re-attached stream: more ticks than before the pause.
    const before = (await collectSoFar(handle)).match(/tick/g)?.length ?? 0;
    await readUntil({ stdout: tail(handle) }, /tick/);
    const afterResume = (await collectSoFar(handle)).match(/tick/g)?.length ?? 0;
    assert.ok(afterResume > before, `no new output after resume (${before} → ${afterResume})`);
    await handle.kill();
    assert.equal((await handle.wait()).signal, "SIGKILL");
  });

  it("runs a shell on a terminal: sees a tty of the given size, follows resizes, Ctrl-C, exit code", async () => {
    const shell = await sandbox.pty.create({ rows: 24, cols: 80, cmd: "sh" });
    assert.ok(shell instanceof PtyProcess);
    await shell.sendInput("tty; stty size\n");
    assert.match(await readUntil(shell, /24 80/), /\/dev\/pts\/\d+/);
    await shell.resize({ rows: 30, cols: 100 });
    await shell.sendInput("stty size\n");
    await readUntil(shell, /30 100/);
    await shell.sendInput("sleep 600\n");
    await sleep(500);
    await shell.sendInput("\x03echo after-interrupt\n");
    await readUntil(shell, /after-interrupt\r?\n/);
    await shell.sendInput("exit 3\n");
    assert.equal((await shell.wait()).exitCode, 3);
    const reconnected = await sandbox.pty.connect(shell.pid);
    await assert.rejects(reconnected.resize({ rows: 10, cols: 10 }), /exited/);
  });

  it("kills a streamed command when its caller aborts", async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 1500);
    await assert.rejects(sandbox.runCommand("echo begun; sleep 600", { onStdout: () => {}, signal: controller.signal }));
    await sleep(500);
    const processes = await sandbox.processes.list();
    assert.ok(!processes.some((p) => p.running && p.command?.includes("sleep 600")), "the aborted command still runs");
  });

  it("refuses bad requests and another tenant's processes", async () => {
    const mine = await sandbox.runCommand("sleep 600", { background: true });
    const asB = await Sandbox.get(sandbox.sandboxId, connB).catch((error: unknown) => error);
    assert.ok(asB instanceof NotFoundError, "tenant B cannot see tenant A's sandbox");
    await assert.rejects(sandbox.processes.connect("no-such-process"), NotFoundError);
    await assert.rejects(mine.sendStdin("x"), /stdin is not open/);
    await assert.rejects(sandbox.processes.start("true", { pty: { rows: 0, cols: 80 } }), /rows/);
    const badCwd = await (await sandbox.processes.start("true", { cwd: "/no/such/dir" })).wait();
    assert.notEqual(badCwd.exitCode, 0);
    assert.match(badCwd.stderr, /cannot start the command: .*no\/such\/dir/);
    const noProgram = await sandbox.runCommand(["/no/such/program"]);
    assert.equal(noProgram.exitCode, 127);
    assert.match(noProgram.stderr, /cannot start the command/);
    const forB = await fetch(`${server.url}/v1/sandboxes/${sandbox.sandboxId}/processes/${mine.pid}`, { headers: { authorization: `Bearer ${connB.apiKey}` } });
    assert.equal(forB.status, 404);
    await mine.kill();
  });
});

/** The output kept so far, without waiting for more. */
async function collectSoFar(process: { output(options: { follow: boolean }): AsyncIterable<{ data: Uint8Array }> }): Promise<string> {
  let text = "";
  for await (const chunk of process.output({ follow: false })) text += new TextDecoder().decode(chunk.data);
  return text;
}

/** stdout from the next output on (skipping what is kept already). */
async function* tail(process: { output(options: { from?: number; follow?: boolean }): AsyncIterable<{ seq: number; data: Uint8Array }> }): AsyncGenerator<string> {
  let last = -1;
  for await (const chunk of process.output({ follow: false })) last = chunk.seq;
  for await (const chunk of process.output({ from: last + 1 })) yield new TextDecoder().decode(chunk.data);
}
