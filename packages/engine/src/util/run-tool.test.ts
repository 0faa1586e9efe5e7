// runTool when the process is out of file descriptors: the spawn fails with EMFILE, and that must come back as a
// rejected promise (a ToolError), never as an 'error' event nobody listens to (which would end the server).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";

const runToolModule = join(dirname(fileURLToPath(import.meta.url)), "run-tool.js");

describe("runTool", () => {
  it("rejects, and the process carries on, when spawn fails with EMFILE", () => {
    // A child with a soft limit of 64 descriptors fills them all, then runs a tool twice.
    const script = `
      import { openSync } from "node:fs";
      const { runTool, ToolError } = await import(${JSON.stringify(runToolModule)});
      const held = [];
      for (let i = 0; i < 200; i++) {
        try { held.push(openSync("/dev/null", "r")); } catch { break; }
      }
      const outcomes = [];
      for (let i = 0; i < 2; i++) {
        outcomes.push(await runTool("true", []).then(() => "resolved", (e) => (e instanceof ToolError ? e.message : "other: " + e)));
      }
      process.stdout.write(JSON.stringify({ held: held.length, outcomes }));
    `;
    const result = spawnSync("prlimit", ["--nofile=64:64", process.execPath, "--input-type=module", "-e", script], { encoding: "utf8", timeout: 60_000 });
    assert.equal(result.status, 0, `the child crashed: ${result.stderr}`);
    const report = JSON.parse(result.stdout) as { held: number; outcomes: string[] };
    assert.ok(report.held > 0 && report.held < 64, `descriptors held: ${report.held}`);
    assert.equal(report.outcomes.length, 2);
    for (const outcome of report.outcomes) assert.match(outcome, /true failed .*EMFILE/);
  });

  it("rejects with a ToolError for a tool that does not exist, and resolves with stdout for one that works", async () => {
    const { runTool, ToolError } = await import("./run-tool.js");
    await assert.rejects(runTool("codecourier-no-such-tool", []), (error) => error instanceof ToolError && /ENOENT/.test(error.message));
    assert.equal((await runTool("echo", ["hello"])).toString(), "hello\n");
  });
});
