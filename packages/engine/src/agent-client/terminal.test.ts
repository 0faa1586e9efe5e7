// Commands on a pseudo-terminal (ExecSpec.pty) through the in-process agent and the real guest-spawner helper, the
// way `codecourier shell` and the SDK's pty use them.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFile, readdir, mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, type Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createAgent, type Agent } from "@codecourier/agent";
import { answerHostHandshake, type ExecSpec } from "@codecourier/protocol";
import { compileGuestHelper, guestHelper } from "../images/guest-helpers.js";
import { AgentClient, AgentError, type CommandHandle } from "./index.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** Long enough for a slow shared CI machine, short enough that a missed pattern fails the test fast. */
const outputTimeoutMs = 10_000;

/** Serves `agent` on a Unix socket, as QEMU exposes the guest's port, and connects a client to it. */
async function serve(agent: Agent, dir: string): Promise<{ client: AgentClient; stop: () => Promise<void> }> {
  const socketPath = join(dir, `agent-${Math.random().toString(16).slice(2)}.sock`);
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    void answerHostHandshake(socket).then(() => agent.serveSession(socket), () => socket.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, resolve);
  });
  const client = await AgentClient.connect(socketPath);
  return {
    client,
    async stop() {
      agent.killAllCommands();
      await client.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Everything a terminal showed so far, and a way to wait for what it will show. */
class Screen {
  text = "";
  readonly #waiters = new Set<() => void>();

  constructor(output: Readable) {
    output.setEncoding("utf8");
    output.on("data", (chunk: string) => {
      this.text += chunk;
      for (const wake of this.#waiters) wake();
    });
  }

  /** Waits until the text from `from` on matches `pattern`; returns the index just past the match. */
  async waitFor(pattern: RegExp, from = 0): Promise<number> {
    return (await this.waitForMatch(pattern, from)).end;
  }

  async waitForMatch(pattern: RegExp, from = 0): Promise<{ match: RegExpExecArray; end: number }> {
    const deadline = Date.now() + outputTimeoutMs;
    for (;;) {
      const match = pattern.exec(this.text.slice(from));
      if (match !== null) return { match, end: from + match.index + match[0].length };
      const left = deadline - Date.now();
      if (left <= 0) assert.fail(`terminal never showed ${pattern}; it showed: ${JSON.stringify(this.text)}`);
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.#waiters.delete(wake);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(wake, left);
        this.#waiters.add(wake);
      });
    }
  }
}

/** A command on a terminal whose keyboard the test types on. */
function openTerminal(client: AgentClient, spec: ExecSpec): { command: CommandHandle; screen: Screen; type: (keys: string) => void } {
  const keyboard = new PassThrough();
  const command = client.exec(spec, { stdin: keyboard });
  return { command, screen: new Screen(command.stdout), type: (keys) => keyboard.write(keys) };
}

/** Pids of the processes in a session (a pty command is a session leader, so its pid is the session id). */
async function processesInSession(sessionId: number): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, "utf8").catch(() => "");
    // Fields after the parenthesised command name: state ppid pgrp session …
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (fields[0] !== "Z" && Number(fields[3]) === sessionId) found.push(Number(entry));
  }
  return found;
}

/** Whether a process with exactly this argv runs (zombies excluded). */
async function isRunning(argv: string[]): Promise<boolean> {
  const wanted = Buffer.from(`${argv.join("\0")}\0`);
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`).catch(() => Buffer.alloc(0));
    if (cmdline.equals(wanted)) return true;
  }
  return false;
}

const interactiveShell = (rows = 24, cols = 80): ExecSpec => ({ argv: ["/bin/sh"], env: { PS1: "prompt> " }, pty: { rows, cols } });

describe("commands on a terminal, through the guest-spawner helper", () => {
  let dir: string;
  let agent: Agent;
  let client: AgentClient;
  let stop: () => Promise<void>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "cc-terminal-"));
    const helper = join(dir, "guest-spawner");
    await compileGuestHelper(guestHelper("guest-spawner"), helper);
    agent = createAgent({ spawnerPath: helper });
    ({ client, stop } = await serve(agent, dir));
  });
  after(async () => {
    await stop();
    agent.spawner.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("gives the command a terminal of the asked size on stdin, stdout and stderr, with TERM set", async () => {
    const result = await client.run({
      shell: 'test -t 0 && test -t 1 && test -t 2 && echo all-terminals; tty; stty size; echo "TERM=$TERM"; echo to-stderr >&2',
      pty: { rows: 33, cols: 101 },
    });
    const output = result.stdout.toString();
    assert.equal(result.exitCode, 0, output);
    assert.match(output, /^all-terminals\r$/m);
    assert.match(output, /^\/dev\/pts\/\d+\r$/m);
    assert.match(output, /^33 101\r$/m);
    assert.match(output, /^TERM=xterm-256color\r$/m);
    assert.match(output, /^to-stderr\r$/m, "stderr is the terminal too: it arrives as stdout");
    assert.equal(result.stderr.length, 0);
  });

  it("keeps a TERM the spec sets, and passes the exit code on", async () => {
    const result = await client.run({ shell: 'echo "TERM=$TERM"; exit 7', env: { TERM: "dumb" }, pty: { rows: 24, cols: 80 } });
    assert.match(result.stdout.toString(), /^TERM=dumb\r$/m);
    assert.equal(result.exitCode, 7);
    assert.equal(result.signal, null);
  });

  it("gives a command run as another user its terminal, owned by that user", { skip: process.getuid?.() !== 0 && "needs root to switch users" }, async () => {
    const result = await client.run({ shell: 'test -t 0 && test -t 1 && stat -c "owner=%U" "$(tty)"; id -un', user: "nobody", pty: { rows: 24, cols: 80 } });
    assert.equal(result.exitCode, 0, result.stdout.toString());
    assert.match(result.stdout.toString(), /^owner=nobody\r\nnobody\r$/m);
  });

  it("echoes typed input, and a resize reaches a running interactive shell", async () => {
    const { command, screen, type } = openTerminal(client, interactiveShell(24, 80));
    let seen = await screen.waitFor(/prompt> /);
    type("stty size\n");
    seen = await screen.waitFor(/stty size\r\n/, seen); // the terminal's echo
    seen = await screen.waitFor(/^24 80\r$/m, seen);
    await command.resize(40, 100);
    type("stty size\n");
    await screen.waitFor(/^40 100\r$/m, seen);
    type("exit 3\n");
    const exit = await command.wait();
    assert.equal(exit.exitCode, 3);
  });

  it("sends SIGWINCH to the foreground job on resize", async () => {
    const { command, screen } = openTerminal(client, {
      shell: "trap 'echo winch; stty size' WINCH; echo ready; while :; do sleep 0.05; done",
      pty: { rows: 24, cols: 80 },
    });
    const seen = await screen.waitFor(/^ready\r$/m);
    await client.resize(await command.id, 50, 120);
    await screen.waitFor(/^winch\r\n50 120\r$/m, seen);
    await command.kill();
    assert.equal((await command.wait()).signal, "SIGKILL");
  });

  it("interrupts the foreground job of an interactive shell on Ctrl-C", async () => {
    const { command, screen, type } = openTerminal(client, interactiveShell());
    let seen = await screen.waitFor(/prompt> /);
    const startedAt = Date.now();
    type("echo started; sleep 100\n");
    seen = await screen.waitFor(/^started\r$/m, seen);
    await sleep(200); // let the shell start sleep: a Ctrl-C before that would only interrupt the shell's own read
    type("\x03");
    seen = await screen.waitFor(/prompt> /, seen);
    type('echo "status=$?"\n');
    await screen.waitFor(/^status=130\r$/m, seen);
    assert.ok(Date.now() - startedAt < 50_000, "sleep 100 was interrupted");
    type("exit\n");
    assert.equal((await command.wait()).exitCode, 0, "the shell itself lived on: Ctrl-C went to the foreground job");
  });

  it("ends an interactive shell's foreground job when the shell is killed: the terminal hangs up", async () => {
    const { command, screen, type } = openTerminal(client, interactiveShell());
    let seen = await screen.waitFor(/prompt> /);
    type('echo "shell=$$"\n');
    const { match, end } = await screen.waitForMatch(/^shell=(\d+)\r$/m, seen);
    const shellPid = Number(match[1]);
    seen = await screen.waitFor(/prompt> /, end);
    type("sleep 100\n");
    const deadline = Date.now() + outputTimeoutMs;
    while ((await processesInSession(shellPid)).length < 2) {
      assert.ok(Date.now() < deadline, "sleep never started");
      await sleep(20);
    }
    await command.kill();
    assert.equal((await command.wait()).signal, "SIGKILL");
    while ((await processesInSession(shellPid)).length > 0) {
      assert.ok(Date.now() < deadline + outputTimeoutMs, `left running: ${(await processesInSession(shellPid)).join(" ")}`);
      await sleep(20);
    }
  });

  it("ends when the shell exits, though a job it left in the background still holds the terminal", async () => {
    const { command, screen, type } = openTerminal(client, interactiveShell());
    let seen = await screen.waitFor(/prompt> /);
    type('sleep 30 & echo "shell=$$"\n');
    const { match, end } = await screen.waitForMatch(/^shell=(\d+)\r$/m, seen);
    seen = await screen.waitFor(/prompt> /, end);
    const exitedAt = Date.now();
    type("echo bye; exit 5\n");
    const exit = await command.wait();
    assert.equal(exit.exitCode, 5);
    assert.ok(Date.now() - exitedAt < 20_000, "did not wait for the background job");
    assert.match(screen.text.slice(seen), /^bye\r$/m, "the shell's last output came through before the hang-up");
    for (const pid of await processesInSession(Number(match[1]))) process.kill(pid, "SIGKILL");
  });

  it("relays a lot of output intact, and stops the command while the host does not read", async () => {
    const seq = ["seq", "1", "100000"];
    const command = client.exec({ shell: `${seq.join(" ")}; echo done`, pty: { rows: 24, cols: 80 } });
    await command.id;
    // Not reading yet: ~590 KB fit neither the HTTP/2 window nor the pipes, so seq must be blocked, not finished.
    await sleep(500);
    assert.ok(await isRunning(seq), "seq is still there: the terminal stopped it");
    const chunks: Buffer[] = [];
    for await (const chunk of command.stdout) chunks.push(chunk as Buffer);
    assert.equal((await command.wait()).exitCode, 0);
    const lines = Buffer.concat(chunks).toString().split("\r\n");
    assert.equal(lines.length, 100_002);
    assert.deepEqual(lines.slice(0, 100_000), Array.from({ length: 100_000 }, (_, i) => String(i + 1)));
    assert.equal(lines[100_000], "done");
  });

  it("relays a lot of input intact", async () => {
    const input = randomBytes(225_000).toString("base64"); // printable: no byte the line discipline acts on
    const { command, screen, type } = openTerminal(client, {
      shell: `stty raw -echo -iexten; echo ready; head -c ${input.length} | sha256sum`,
      pty: { rows: 24, cols: 80 },
    });
    await screen.waitFor(/ready/);
    type(input);
    await screen.waitFor(new RegExp(createHash("sha256").update(input).digest("hex")));
    assert.equal((await command.wait()).exitCode, 0);
  });

  it("runs a background command on a terminal and resizes it after a re-attach", async () => {
    const first = client.exec({ shell: "trap 'stty size' WINCH; echo ready; while :; do sleep 0.05; done", pty: { rows: 24, cols: 80 }, background: true });
    const id = await first.id;
    await new Screen(first.stdout).waitFor(/^ready\r$/m);
    const attached = client.attach(id);
    const screen = new Screen(attached.stdout);
    await assert.rejects(first.wait(), { name: "CommandDetachedError" });
    await attached.id;
    await attached.resize(30, 90);
    await screen.waitFor(/^30 90\r$/m);
    await attached.kill();
    assert.equal((await attached.wait()).signal, "SIGKILL");
  });

  it("refuses pty sizes out of range, before starting anything", async () => {
    const sizes: unknown[] = [{ rows: 0, cols: 80 }, { rows: 24, cols: 1001 }, { rows: 1.5, cols: 80 }, { rows: 24 }, { rows: 24, cols: 80, x: 1 }, "24x80"];
    for (const pty of sizes) {
      await assert.rejects(client.run({ shell: "true", pty } as unknown as ExecSpec), (error: unknown) => {
        assert.ok(error instanceof AgentError && error.code === "bad_request", `${JSON.stringify(pty)}: ${String(error)}`);
        assert.match(error.message, /pty/);
        return true;
      });
    }
    const { command } = openTerminal(client, interactiveShell());
    const id = await command.id;
    for (const [rows, cols] of [[0, 80], [24, 0], [1001, 80], [24, 1001], [2.5, 80]] as const) {
      await assert.rejects(client.resize(id, rows, cols), RangeError);
    }
    await command.kill();
    await command.wait();
  });

  it("refuses to resize a command without a pty, and an unknown command", async () => {
    const command = client.exec({ argv: ["sleep", "100"] });
    const id = await command.id;
    await assert.rejects(client.resize(id, 24, 80), (error: unknown) => {
      assert.ok(error instanceof AgentError && error.code === "bad_request", String(error));
      assert.match(error.message, /not started with a pty/);
      return true;
    });
    await assert.rejects(command.resize(24, 80), { code: "bad_request" });
    await command.kill();
    await command.wait();
    await assert.rejects(client.resize("no-such-command", 24, 80), { code: "not_found" });
  });
});

describe("commands on a terminal without the helper", () => {
  it("are refused with a 400 that names the helper: Node's spawn cannot give a child a terminal", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cc-terminal-node-"));
    const agent = createAgent();
    const { client, stop } = await serve(agent, dir);
    try {
      await assert.rejects(client.run({ shell: "true", pty: { rows: 24, cols: 80 } }), (error: unknown) => {
        assert.ok(error instanceof AgentError && error.code === "bad_request", String(error));
        assert.match(error.message, /pty needs the guest-spawner helper/);
        return true;
      });
      assert.equal((await client.run({ shell: "true" })).exitCode, 0, "commands without a pty still run");
    } finally {
      await stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
