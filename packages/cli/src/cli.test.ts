// Runs the built CLI as a child process against real VMs (each case boots one).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { before, describe, it } from "node:test";
import { ensureGuestImage } from "@codecourier/engine";

// The launcher npm links as the `codecourier` bin (dist/cli.test.js → ../bin/codecourier.js).
const cliMain = join(dirname(fileURLToPath(import.meta.url)), "..", "bin", "codecourier.js");

interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], stdin?: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliMain, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
    child.stdin.end(stdin ?? "");
  });
}

describe("codecourier vm run", () => {
  let kernelVersion: string;

  before(async () => {
    kernelVersion = (await ensureGuestImage()).kernelVersion;
  });

  it("prints only the command's output on stdout", async () => {
    const result = await runCli(["vm", "run", "-m", "256", "--", "uname", "-r"]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, `${kernelVersion}\n`);
  });

  it("exits with the command's exit code", async () => {
    const result = await runCli(["vm", "run", "-m", "256", "--shell", "--", "echo to-stderr >&2; exit 3"]);
    assert.equal(result.code, 3, result.stderr);
    assert.equal(result.stdout, "");
    assert.match(result.stderr, /^to-stderr$/m);
  });

  it("forwards stdin to the command", async () => {
    const result = await runCli(["vm", "run", "-m", "256", "--", "cat"], "hi\n");
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, "hi\n");
  });
});
