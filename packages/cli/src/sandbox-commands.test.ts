// The sandbox commands (create, exec, ls, snapshot, pause, resume, fork, kill, snapshots) as child processes
// against a real server (npm start's entry point) with real VMs, in a data dir of its own.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { mkdir, mkdtemp, readFile, rm, stat, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import type { Writable } from "node:stream";
import { Sandbox } from "@codecourier/sdk";
import { startLocalServer, type LocalServer } from "@codecourier/engine";

const cliMain = join(dirname(fileURLToPath(import.meta.url)), "..", "bin", "codecourier.js");
interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface SandboxJson {
  sandboxId: string;
  state: string;
  template: string;
  metadata: Record<string, string>;
}

/** Runs a program to its end with piped stdio; `feed` writes its stdin. Its stdout and stderr, collected. */
function runCollecting(file: string, args: string[], env: NodeJS.ProcessEnv, feed: (stdin: Writable) => void): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    feed(child.stdin);
  });
}

describe("codecourier sandbox commands (real server, real VMs)", () => {
  let server: LocalServer;
  let env: NodeJS.ProcessEnv;

  /** The CLI, asynchronously: a blocking spawnSync would stop us draining the server's stderr pipe. */
  const cli = (args: string[], stdin = ""): Promise<CliResult> =>
    runCollecting(process.execPath, [cliMain, ...args], env, (input) => input.end(stdin));

  /** The CLI, which must succeed: its stdout. */
  const ok = async (args: string[], stdin?: string): Promise<string> => {
    const result = await cli(args, stdin);
    assert.equal(result.code, 0, `codecourier ${args.join(" ")} exited ${result.code}: ${result.stderr}`);
    return result.stdout;
  };

  const listed = async (...args: string[]): Promise<SandboxJson[]> => JSON.parse(await ok(["ls", "--json", ...args])) as SandboxJson[];

  before(async () => {
    server = await startLocalServer({ prefix: "cccli-" });
    env = { ...process.env, CODECOURIER_HOME: server.home, CODECOURIER_URL: server.url, CODECOURIER_QUIET: "" };
    delete env.CODECOURIER_API_KEY;
    const key = JSON.parse(await ok(["keys", "create", "--tenant", "t", "--json"])) as { apiKey: string };
    env.CODECOURIER_API_KEY = key.apiKey;
  });

  after(() => server?.stop());

  it("creates, runs commands in, snapshots, pauses, resumes, forks and kills a sandbox", async () => {
    const created = await cli(["create", "--metadata", "purpose=cli-test", "--env", "GREETING=hi"]);
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, /^\S+\n$/, "create prints only the id on stdout");
    assert.match(created.stderr, /creating a sandbox/, "progress goes to stderr");
    const id = created.stdout.trim();

    // Exit status, stdout and stderr apart; one argument is a shell command line.
    const failing = await cli(["exec", id, "--", 'echo "$GREETING"; echo oops >&2; exit 3']);
    assert.equal(failing.code, 3, failing.stderr);
    assert.equal(failing.stdout, "hi\n");
    assert.match(failing.stderr, /^oops$/m);
    // Several arguments are an argv: no word splitting, no shell.
    assert.equal(await ok(["exec", id, "--", "printf", "%s|", "a b", "$HOME"]), "a b|$HOME|");
    // stdin forwarded, and the command's options.
    assert.equal(await ok(["exec", id, "--", "cat"], "piped\n"), "piped\n");
    assert.equal(await ok(["exec", id, "--cwd", "/tmp", "-e", "A=1", "B=x=y", "--", 'echo "$(pwd) $A $B"']), "/tmp 1 x=y\n");
    // Killed by a signal: 128 + its number; past --timeout: 124.
    assert.equal((await cli(["exec", id, "--", "kill -TERM $$"])).code, 143);
    const slow = await cli(["exec", id, "--timeout", "1000", "--", "sleep 30"]);
    assert.equal(slow.code, 124, slow.stderr);
    assert.match(slow.stderr, /timed out/);

    const all = await listed();
    const mine = all.find((s) => s.sandboxId === id);
    assert.ok(mine, `ls --json lists ${id}: ${JSON.stringify(all)}`);
    assert.equal(mine.state, "running");
    assert.deepEqual(mine.metadata, { purpose: "cli-test" });
    assert.deepEqual((await listed("--metadata", "purpose=other")).map((s) => s.sandboxId), []);
    const table = await ok(["ls", "--metadata", "purpose=cli-test"]);
    assert.match(table, /^ID\s+STATE\s+TEMPLATE\s+CPU\s+MEMORY\s+CREATED$/m);
    assert.match(table, new RegExp(`^${id}\\s+running\\s+base(@\\d+)?\\s+1\\s+512MB\\s`, "m"));

    const snapshotId = (await ok(["snapshot", id])).trim();
    assert.match(snapshotId, /^\S+$/);
    const snapshots = JSON.parse(await ok(["snapshots", "--json"])) as Array<{ snapshotId: string; sandboxId: string }>;
    assert.ok(snapshots.some((s) => s.snapshotId === snapshotId && s.sandboxId === id), JSON.stringify(snapshots));
    assert.match(await ok(["snapshots"]), new RegExp(`^${snapshotId}\\s+${id}\\s`, "m"));

    await ok(["exec", id, "--", "echo kept > /root/mark"]);
    assert.equal((await ok(["pause", id])).trim(), id);
    assert.deepEqual((await listed("--state", "paused")).map((s) => s.sandboxId), [id]);
    assert.equal((await ok(["resume", id])).trim(), id);
    assert.equal((await listed()).find((s) => s.sandboxId === id)?.state, "running");
    assert.equal(await ok(["exec", id, "--", "cat /root/mark"]), "kept\n", "files survive pause and resume");

    const forked = await ok(["fork", id, "-n", "1"]);
    assert.match(forked, /^\S+\n$/, "fork prints one id per line");
    const forkId = forked.trim();
    assert.notEqual(forkId, id);
    assert.equal(await ok(["exec", forkId, "--", 'cat /root/mark; echo "$GREETING"']), "kept\nhi\n", "a fork starts where its source was");

    assert.equal((await ok(["kill", id])).trim(), id);
    assert.equal((await ok(["kill", forkId])).trim(), forkId);
    const left = (await listed()).map((s) => s.sandboxId);
    assert.ok(!left.includes(id) && !left.includes(forkId), `killed sandboxes are not live: ${left.join(" ")}`);
    assert.equal((await cli(["kill", id])).code, 0, "killing a stopped sandbox again is no error");
    const gone = await cli(["exec", id, "--", "true"]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, new RegExp(`^codecourier: .*${id}`, "m"));

    // Newest first: a snapshot is refused while a later one builds on it.
    const allSnapshots = JSON.parse(await ok(["snapshots", "--json"])) as Array<{ snapshotId: string; createdAt: string }>;
    for (const snapshot of allSnapshots.sort((a, b) => b.createdAt.localeCompare(a.createdAt))) {
      assert.equal((await ok(["snapshots", "rm", snapshot.snapshotId])).trim(), snapshot.snapshotId);
    }
    assert.deepEqual(JSON.parse(await ok(["snapshots", "--json"])), []);
  });

  it("opens a shell on a terminal, prints a process's logs, and copies files and directories both ways", async () => {
    const id = (await ok(["create"])).trim();
    // script(1) gives the CLI a real terminal; what we write to its stdin is typed into it.
    const shellCommand = `stty rows 33 cols 91; exec ${process.execPath} ${cliMain} shell ${id} --cmd sh`;
    const shell = await runCollecting("script", ["-qefc", shellCommand, "/dev/null"], { ...env, COLUMNS: "90", LINES: "33" }, (input) => {
      input.write("tty; stty size; echo in-shell-$((6*7))\n");
      setTimeout(() => input.end("exit 7\n"), 3000);
    });
    assert.equal(shell.code, 7, `shell: ${shell.stdout} ${shell.stderr}`);
    assert.match(shell.stdout, /in-shell-42/);
    assert.match(shell.stdout, /\/dev\/pts\/\d+/);
    assert.match(shell.stdout, /^33 91\r?$/m, "the sandbox's terminal has this terminal's size");

    const sandbox = await Sandbox.connect(id, { url: server.url, apiKey: env.CODECOURIER_API_KEY });
    const background = await sandbox.runCommand("echo one; echo two >&2; echo three", { background: true });
    await background.wait();
    const logs = await cli(["logs", id, background.pid]);
    assert.equal(logs.code, 0, logs.stderr);
    assert.equal(logs.stdout, "one\nthree\n");
    assert.match(logs.stderr, /^two$/m);
    assert.match(await ok(["logs", id]), new RegExp(`^${background.pid}\\s+exited 0\\s.*echo one`, "m"));

    const local = await mkdtemp(join(tmpdir(), "cccp-"));
    try {
      await mkdir(join(local, "tree", "sub dir", "ünï"), { recursive: true });
      await writeFile(join(local, "tree", "top.txt"), "top\n");
      await writeFile(join(local, "tree", "sub dir", "ünï", "deep.bin"), Buffer.from([0, 1, 2, 255]));
      await writeFile(join(local, "single.txt"), "single\n");
      const mtime = new Date("2024-02-03T04:05:06Z");
      await utimes(join(local, "single.txt"), mtime, mtime);

      await ok(["cp", join(local, "single.txt"), `${id}:/root/`]);
      assert.equal(await ok(["exec", id, "--", "cat /root/single.txt; stat -c %Y /root/single.txt"]), `single\n${mtime.getTime() / 1000}\n`);
      await ok(["cp", join(local, "tree"), `${id}:copied`]);
      assert.equal(await ok(["exec", id, "--", "cat copied/top.txt; od -An -tu1 'copied/sub dir/ünï/deep.bin' | tr -s ' '"]), "top\n 0 1 2 255\n");

      await ok(["cp", `${id}:copied`, join(local, "back")]);
      assert.equal(await readFile(join(local, "back", "top.txt"), "utf8"), "top\n");
      assert.deepEqual([...(await readFile(join(local, "back", "sub dir", "ünï", "deep.bin")))], [0, 1, 2, 255]);
      await ok(["cp", `${id}:single.txt`, join(local, "single-back.txt")]);
      assert.equal((await stat(join(local, "single-back.txt"))).mtime.getTime(), mtime.getTime());
      assert.equal(await ok(["cp", `${id}:/root/single.txt`, "-"]), "single\n");
      assert.equal((await cli(["cp", join(local, "nope"), `${id}:x`])).code, 1);
      assert.equal((await cli(["cp", "a", "b"])).code, 2, "both sides local is a usage error");
    } finally {
      await rm(local, { recursive: true, force: true });
      await ok(["kill", id]);
    }
  });

  it("sets a sandbox's network policy, tunnels and exposed ports and lists its events (net …)", async () => {
    const id = (await ok(["create", "--allow", "example.test", "--deny", "*.bad.test"])).trim();
    const shown = JSON.parse(await ok(["net", "show", id, "--json"])) as { policy: { allow: string[]; deny: string[] } };
    assert.deepEqual([shown.policy.allow, shown.policy.deny], [["example.test"], ["*.bad.test"]]);
    assert.deepEqual((JSON.parse(await ok(["net", "allow", id, "*.npmjs.org:443", "10.9.0.0/16"])) as { allow: string[] }).allow, [
      "example.test",
      "*.npmjs.org:443",
      "10.9.0.0/16",
    ]);
    assert.deepEqual((JSON.parse(await ok(["net", "allow", id, "example.test", "--remove"])) as { allow: string[] }).allow, ["*.npmjs.org:443", "10.9.0.0/16"]);
    const bad = await cli(["net", "allow", id, "::1"]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /::1/);
    assert.deepEqual(JSON.parse(await ok(["net", "tunnel", id, "db", "10.9.0.5:5432"])), { name: "db", target: "10.9.0.5:5432", port: 5432 });
    const exposed = JSON.parse(await ok(["net", "expose", id, "8080"])) as { url: string; token: string | null };
    assert.ok(exposed.url.startsWith("http://") && exposed.token);
    assert.match(await ok(["net", "show", id]), /tunnel: +db:5432 → 10\.9\.0\.5:5432[\s\S]*exposed: +8080 at http/);
    await ok(["net", "unexpose", id, "8080"]);
    // A name the policy does not allow: refused by the DNS stub, and listed as an event.
    await cli(["exec", id, "--", "getent hosts denied.test"]);
    assert.match(await ok(["net", "events", id]), /dns A +nxdomain +denied\.test +default-deny/);
    await ok(["kill", id]);
  });

  it("reports an unknown sandbox, a wrong key and usage errors on stderr, exit 1 (2 for usage)", async () => {
    const unknown = await cli(["exec", "sb_doesnotexist", "--", "true"]);
    assert.equal(unknown.code, 1);
    assert.equal(unknown.stdout, "");
    assert.match(unknown.stderr, /^codecourier: .*sb_doesnotexist/m);

    const wrongKey = await cli(["ls", "--api-key", "cc_not-a-real-key"]);
    assert.equal(wrongKey.code, 1);
    assert.match(wrongKey.stderr, /^codecourier: .*API key/m);

    const fromEnv = await cli(["ls"]);
    assert.equal(fromEnv.code, 0, "the key from the environment works");
    assert.equal((await cli(["snapshots", "rm", "snap_nope"])).code, 1);
    assert.equal((await cli(["exec", "sb_x"])).code, 2, "exec without a command");
    assert.equal((await cli(["create", "--env", "NOEQUALS"])).code, 2);
    assert.equal((await cli(["create", "--on-timeout", "never"])).code, 2);
  });
});
