// The SDK's portable suite (packages/sdk/src/portable-suite) as child processes under Node, Bun and Deno, against
// one real server (npm start's entry point) with real VMs: the SDK must run unchanged on all three. Bun and Deno
// are the binaries of their npm packages (devDependencies of packages/sdk); a missing one fails its test with
// how to install it, never skips, so a broken install cannot pass as a green run.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { JS_RUNTIMES, findRuntime } from "../testing/js-runtimes.js";
import { startLocalServer, type LocalServer } from "../testing/local-server.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");
const suiteMain = join(root, "packages", "sdk", "dist", "portable-suite", "main.js");
const cliMain = join(root, "packages", "cli", "bin", "codecourier.js");
/** bun and deno are devDependencies of packages/sdk, so they resolve from there. */
const sdkPackageJson = join(root, "packages", "sdk", "package.json");

/** A child must finish before the test runner's own 5-minute limit, so that its output is still reported. */
const SUITE_TIMEOUT_MS = 240_000;

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
  seconds: number;
}

/**
 * Runs a child to its end, stdout and stderr interleaved as they come. Asynchronous: a blocking spawnSync would
 * stop this process draining the server's stderr pipe, and the server would stall on a full pipe.
 */
function runChild(executable: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Finished> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(executable, args, { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => {
      output += `\n[killed after ${timeoutMs / 1000} s]`;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, output, seconds: (Date.now() - started) / 1000 });
    });
  });
}

describe("SDK portable suite on Node, Bun and Deno (real server, real VMs)", () => {
  let server: LocalServer;

  /** A key of a tenant of its own, from the CLI as an operator would make it. */
  const createKey = async (tenant: string): Promise<string> => {
    const result = await runChild(process.execPath, [cliMain, "keys", "create", "--tenant", tenant, "--json"], { ...process.env, CODECOURIER_HOME: server.home }, 30_000);
    assert.equal(result.code, 0, `codecourier keys create: ${result.output}`);
    return (JSON.parse(result.output) as { apiKey: string }).apiKey;
  };

  before(async () => {
    assert.ok(existsSync(suiteMain), `${suiteMain} is missing: build first (npx tsc -b)`);
    server = await startLocalServer({ prefix: "ccsdkrt-" });
  });

  after(() => server?.stop());

  for (const name of JS_RUNTIMES) {
    it(`passes on ${name}`, async (t) => {
      const command = findRuntime(name, sdkPackageJson);
      if (command instanceof Error) assert.fail(command.message);
      const args = [...command.scriptArgs, suiteMain];
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        CODECOURIER_URL: server.url,
        CODECOURIER_API_KEY: await createKey(`sdk-${name}`),
        // Nothing outside may be reachable: no update check, and no colour codes in the output we show.
        DENO_NO_UPDATE_CHECK: "1",
        NO_COLOR: "1",
      };
      const serverLogBefore = server.log().length;
      const result = await runChild(command.executable, args, env, SUITE_TIMEOUT_MS);
      // An `internal` answer says "see the server log": so does the failure message, with what it logged meanwhile.
      const serverLog = server.log().slice(serverLogBefore).trim().split("\n").slice(-40).join("\n");
      const shown = `${command.executable} ${args.join(" ")}\n${result.output}\n--- server log during the run (last 40 lines) ---\n${serverLog}`;
      assert.equal(result.code, 0, `the suite on ${name} exited ${result.code ?? result.signal} after ${result.seconds.toFixed(1)} s:\n${shown}`);
      // Exit 0 alone could be a suite that ran nothing; its last line says every check passed.
      assert.match(result.output, /^pass {2}all \d+ checks on /m, `the suite on ${name} did not report a full pass:\n${shown}`);
      t.diagnostic(`${name}: ${result.output.trim().split("\n").at(-1)} (process: ${result.seconds.toFixed(1)} s)`);
    });
  }
});
