// Hostile suite: a tenant takes down its sandbox's guest agent — kill -9 from inside the guest, junk on the agent's
// virtio-serial port, the guest running out of memory — and the sandbox must come back: the agent is protected from
// the OOM killer and restarted by the guest's PID 1, the host re-opens its session with the nonce handshake, and
// calls meanwhile answer a typed 503 sandbox_unhealthy, never a 500. Real server, real VMs (slow under TCG).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Sandbox } from "@codecourier/sdk";
import { AGENT_PORT_NAME } from "@codecourier/protocol";
import { startLocalServer, withServerLog, type LocalServer } from "../testing/local-server.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** The longest a sandbox may take to answer again after its agent died (a Node start under TCG on a busy host). */
const RECOVERY_BOUND_MS = 180_000;
/**
 * Sets PORT to the agent's port device: /dev/vportNpM, found by its name in sysfs (the guest runs no udev, so there
 * is no /dev/virtio-ports/ link).
 */
const FIND_PORT = `PORT=$(for d in /sys/class/virtio-ports/*; do [ "$(cat $d/name)" = ${AGENT_PORT_NAME} ] && echo /dev/\${d##*/}; done)`;
/** The system disk's busybox: its setsid and timeout, whatever the root filesystem holds. */
const BUSYBOX = "/.codecourier/bin/busybox";

/**
 * Prints "<pid> <oom_score_adj>" for the agent (its command line names agent.mjs; the bracket keeps this script's
 * own command line from matching) and "spawner <pid> <oom_score_adj>" for the guest-spawner helper.
 */
const FIND_PLUMBING = [
  `for p in /proc/[0-9]*; do`,
  `  cmd=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)`,
  `  case "$cmd" in *agent[.]mjs*) echo "agent \${p#/proc/} $(cat $p/oom_score_adj)";; *guest-spawner" --serve"*) echo "spawner \${p#/proc/} $(cat $p/oom_score_adj)";; esac`,
  `done`,
].join("\n");

interface Plumbing {
  agentPid: number;
  agentOomScoreAdj: number;
  spawnerOomScoreAdj: number;
}

async function plumbing(sandbox: Sandbox): Promise<Plumbing> {
  const lines = (await sandbox.runCommand(FIND_PLUMBING, { timeoutMs: 60_000 })).stdout.trim().split("\n");
  const agents = lines.filter((line) => line.startsWith("agent ")).map((line) => line.split(" ").map(Number));
  const spawners = lines.filter((line) => line.startsWith("spawner ")).map((line) => line.split(" ").map(Number));
  assert.equal(agents.length, 1, `exactly one agent: ${lines.join(" | ")}`);
  assert.equal(spawners.length, 1, `exactly one guest-spawner: ${lines.join(" | ")}`);
  return { agentPid: agents[0]![1]!, agentOomScoreAdj: agents[0]![2]!, spawnerOomScoreAdj: spawners[0]![2]! };
}

/**
 * The agent's pid once the guest's plumbing has settled, or undefined while it has not: just after a restart the old
 * agent's guest-spawner may still be on its way out, so for a moment there are two.
 */
async function settledAgentPid(sandbox: Sandbox): Promise<number | undefined> {
  try {
    return (await plumbing(sandbox)).agentPid;
  } catch (error) {
    if (error instanceof assert.AssertionError) return undefined;
    throw error;
  }
}

/** What a caller saw while the sandbox recovered: the error codes of failed calls and the states it reported. */
interface Recovery {
  errorCodes: string[];
  states: string[];
  ms: number;
}

/**
 * Retries `echo ok` until it answers, for at most RECOVERY_BOUND_MS; fails showing what it saw. With `replacing`,
 * until an agent other than that pid answers (for an attack that runs on in the guest after its call returned).
 */
async function waitUntilAnswering(sandbox: Sandbox, { replacing }: { replacing?: number } = {}): Promise<Recovery> {
  const started = Date.now();
  const errorCodes: string[] = [];
  const states: string[] = [];
  for (let attempt = 0; attempt < 2_000; attempt++) {
    states.push((await sandbox.info()).state);
    try {
      const result = await sandbox.runCommand("echo ok", { timeoutMs: 30_000 });
      const replaced = replacing === undefined || ((await settledAgentPid(sandbox)) ?? replacing) !== replacing;
      if (result.stdout === "ok\n" && replaced) return { errorCodes, states, ms: Date.now() - started };
      // A call that reached the old agent just before it died ends as its command did: SIGKILLed with it.
      if (result.stdout !== "ok\n") errorCodes.push(result.signal === "SIGKILL" ? "killed with the agent" : `stdout ${JSON.stringify(result.stdout)}`);
    } catch (error) {
      errorCodes.push(String((error as { code?: unknown }).code ?? error));
    }
    if (Date.now() - started > RECOVERY_BOUND_MS) break;
    await sleep(250);
  }
  assert.fail(`no answer within ${RECOVERY_BOUND_MS} ms; errors ${errorCodes.join(",")}; states ${[...new Set(states)].join(",")}`);
}

/** "sandbox_unhealthy ×12, killed with the agent ×1": how often each failure was seen. */
function summarize(codes: string[]): string {
  const counts = new Map<string, number>();
  for (const code of codes) counts.set(code, (counts.get(code) ?? 0) + 1);
  return [...counts].map(([code, count]) => `${code} ×${count}`).join(", ") || "none";
}

/** A failed call during recovery is the typed 503 (or a command killed with the agent), never an internal error. */
function assertOnlyTypedFailures(recovery: Recovery): void {
  for (const code of recovery.errorCodes) {
    assert.ok(code === "sandbox_unhealthy" || code === "killed with the agent", `errors while recovering: ${recovery.errorCodes.join(",")}`);
  }
  for (const state of recovery.states) assert.ok(state === "running" || state === "unhealthy", `states while recovering: ${recovery.states.join(",")}`);
}

/** Runs a call whose connection the agent's death may cut; what it ended with (an exit or an error code). */
async function outcome(call: Promise<{ exitCode: number | null; signal: string | null }>): Promise<string> {
  try {
    const { exitCode, signal } = await call;
    return signal === null ? `exit ${exitCode}` : `signal ${signal}`;
  } catch (error) {
    return `error ${String((error as { code?: unknown }).code ?? error)}`;
  }
}

describe("hostile: the guest agent restarting (real server, real VMs)", () => {
  let server: LocalServer;
  let sdk: typeof import("@codecourier/sdk");
  let connection: { url: string; apiKey: string };
  let sandbox: Sandbox;

  before(async () => {
    server = await startLocalServer({ prefix: "ccagentrestart-" });
    sdk = await import("@codecourier/sdk");
    connection = { url: server.url, apiKey: await server.createKey("agent-restart-test") };
    sandbox = await withServerLog(server, () => sdk.createSandbox(connection));
  });

  after(async () => {
    await sandbox?.kill().catch(() => {});
    await server?.stop();
  });

  it("keeps the agent and its spawner off the OOM killer's list, and commands on it", async () => {
    const found = await plumbing(sandbox);
    assert.equal(found.agentOomScoreAdj, -1000);
    assert.equal(found.spawnerOomScoreAdj, -1000);
    const own = await sandbox.runCommand("cat /proc/self/oom_score_adj; sh -c 'cat /proc/self/oom_score_adj'");
    assert.equal(own.stdout, "0\n0\n", "a command and its children are ordinary OOM candidates");
  });

  it("comes back after kill -9 of the agent; background commands are gone; pause and resume work after", async (t) => {
    const before = await plumbing(sandbox);
    const background = await sandbox.runCommand("sleep 600", { background: true });
    const killed = await outcome(sandbox.runCommand(`kill -9 ${before.agentPid}`, { timeoutMs: 60_000 }));
    const recovery = await withServerLog(server, () => waitUntilAnswering(sandbox, { replacing: before.agentPid }));
    t.diagnostic(`kill call: ${killed}; answered again after ${recovery.ms} ms; errors ${summarize(recovery.errorCodes)}; states ${[...new Set(recovery.states)].join(",")}`);
    assertOnlyTypedFailures(recovery);
    const afterRestart = await plumbing(sandbox);
    assert.notEqual(afterRestart.agentPid, before.agentPid, "a new agent");
    assert.equal(afterRestart.agentOomScoreAdj, -1000, "the restarted agent is protected too");
    assert.equal((await sandbox.info()).state, "running");

    // The agent's commands went with it (guest-spawner kills them when the agent goes away).
    const sleeping = await sandbox.runCommand("pgrep -x sleep || echo none");
    assert.equal(sleeping.stdout.trim(), "none", "the background sleep was killed with the agent");
    const waited = await Promise.race([outcome(background.wait()), sleep(60_000).then(() => "still waiting")]);
    t.diagnostic(`the background process's wait(): ${waited}`);
    assert.equal(waited, "signal SIGKILL", "a process from before the restart ends, killed with the agent");

    await sandbox.pause();
    assert.equal((await sandbox.info()).state, "paused");
    await sandbox.resume();
    assert.equal((await sandbox.runCommand("echo resumed")).stdout, "resumed\n");
  });

  it("refuses junk on the port while the agent holds it, and survives a guest process that writes junk in its place", async (t) => {
    // While the agent has the port open, nobody else can open it.
    const busy = await sandbox.runCommand(`${FIND_PORT}; [ -c "$PORT" ] || { echo "no port device" >&2; exit 2; }; printf junk > $PORT`);
    assert.notEqual(busy.exitCode, 0);
    assert.match(busy.stderr, /busy/i, `opening the agent's port: ${busy.stderr}`);

    // So a hostile guest kills the agent first and takes the port before the keeper restarts it: for ~2 s it writes
    // random bytes, a fake ready line and HTTP/2-looking garbage, all of which reach the host's socket.
    const { agentPid } = await plumbing(sandbox);
    const junkWriter = [
      FIND_PORT,
      `kill -9 ${agentPid}`,
      // \`command\`: a failed redirection of the special built-in exec must not end the shell.
      `for i in $(seq 200); do command exec 3> $PORT 2>/dev/null && break; sleep 0.01; done`,
      `if [ -e /proc/self/fd/3 ]; then echo took-port > /tmp/junk-result; else echo port-busy > /tmp/junk-result; exit 0; fi`,
      `for i in $(seq 20); do head -c 4096 /dev/urandom >&3; printf 'CCREADY1 %032d\\n' 0 >&3; printf '\\0\\0\\4\\4\\0\\0\\0\\0\\0' >&3; sleep 0.1; done`,
      `exec 3>&-`,
      `echo wrote >> /tmp/junk-result`,
    ].join("\n");
    // In a session of its own, so the agent's spawner does not take it along when the agent dies.
    await outcome(sandbox.runCommand(["sh", "-c", `${BUSYBOX} setsid ${BUSYBOX} timeout 60 sh -c "$1" </dev/null >/dev/null 2>&1 &`, "sh", junkWriter], { timeoutMs: 60_000 }));
    const recovery = await withServerLog(server, () => waitUntilAnswering(sandbox, { replacing: agentPid }));
    assertOnlyTypedFailures(recovery);
    const result = (await sandbox.runCommand("cat /tmp/junk-result 2>/dev/null || echo unknown")).stdout.trim().replace(/\n/g, ", ");
    t.diagnostic(`junk writer: ${result}; answered again after ${recovery.ms} ms; errors ${summarize(recovery.errorCodes)}`);
  });

  it("comes back when the agent dies in the middle of streaming output", async (t) => {
    const { agentPid } = await plumbing(sandbox);
    let streamed = 0;
    // Output the guest keeps writing, so the new agent starts while old frames are in flight both ways.
    const streaming = outcome(
      sandbox.runCommand("while :; do echo 0123456789abcdef0123456789abcdef; done", { timeoutMs: 120_000, onStdout: (text) => (streamed += text.length) }),
    );
    for (let i = 0; i < 600 && streamed < 64 * 1024; i++) await sleep(100);
    assert.ok(streamed >= 64 * 1024, "output was streaming before the kill");
    const killed = await outcome(sandbox.runCommand(`kill -9 ${agentPid}`, { timeoutMs: 60_000 }));
    const recovery = await withServerLog(server, () => waitUntilAnswering(sandbox, { replacing: agentPid }));
    const ended = await Promise.race([streaming, sleep(60_000).then(() => "still streaming")]);
    t.diagnostic(`kill call: ${killed}; streaming call ended with: ${ended} after ${streamed} chars; answered again after ${recovery.ms} ms`);
    assert.ok(ended === "signal SIGKILL" || ended === "error sandbox_unhealthy", `the stream from before the restart ends clearly: ${ended}`);
    assertOnlyTypedFailures(recovery);
  });

  it("lets the OOM killer take the memory hog, not the agent", async (t) => {
    const before = await plumbing(sandbox);
    const { memoryMB } = await sandbox.info();
    // perl is in every Debian (perl-base); 1 MiB strings until far past the guest's memory (bounded: 8x).
    const hog = await sandbox.runCommand(["perl", "-e", `my @a; for (1..${memoryMB * 8}) { push @a, "x" x (1 << 20) } print "survived\\n"`], { timeoutMs: 300_000 });
    t.diagnostic(`the hog ended with exit ${hog.exitCode}, signal ${hog.signal}`);
    assert.equal(hog.signal, "SIGKILL", `the hog was killed by the OOM killer (stdout ${hog.stdout}, stderr ${hog.stderr.slice(0, 200)})`);
    const afterwards = await plumbing(sandbox);
    assert.equal(afterwards.agentPid, before.agentPid, "the same agent still serves");
    assert.equal((await sandbox.runCommand("echo ok")).stdout, "ok\n");
    assert.equal((await sandbox.info()).state, "running");
  });

  it("after a server restart adopts the VM: the same agent answers through the handshake, and a kill -9 still heals", async (t) => {
    const before = await plumbing(sandbox);
    // The crashed server's connection leaves whatever it had in flight in the port; the new one skips it.
    await server.restartAfterCrash();
    const adopted = await withServerLog(server, () => waitUntilAnswering(sandbox));
    assert.equal((await plumbing(sandbox)).agentPid, before.agentPid, "the adopted VM's agent was not restarted");
    const killed = await outcome(sandbox.runCommand(`kill -9 ${before.agentPid}`, { timeoutMs: 60_000 }));
    const recovery = await withServerLog(server, () => waitUntilAnswering(sandbox, { replacing: before.agentPid }));
    t.diagnostic(`adopted after ${adopted.ms} ms; kill call: ${killed}; answered again after ${recovery.ms} ms; errors ${summarize(recovery.errorCodes)}`);
    assertOnlyTypedFailures(recovery);
  });
});
