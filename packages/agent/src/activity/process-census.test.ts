import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ProcessCensus } from "./process-census.js";

describe("ProcessCensus", () => {
  let proc: string;
  const addProcess = async (pid: number, comm: string, state: string, ppid: number) => {
    await mkdir(join(proc, String(pid)), { recursive: true });
    await writeFile(join(proc, String(pid), "stat"), `${pid} (${comm}) ${state} ${ppid} 1 1 0 -1 4194560`);
  };

  before(async () => {
    proc = await mkdtemp(join(tmpdir(), "cc-census-"));
    await addProcess(1, "sh", "S", 0);
    await addProcess(2, "kthreadd", "S", 0);
    await addProcess(40, "agent", "S", 1);
    await mkdir(join(proc, "self"));
  });
  after(() => rm(proc, { recursive: true, force: true }));

  it("counts only userland processes that appeared after the agent started", async () => {
    const census = new ProcessCensus(proc);
    assert.equal(await census.otherProcesses([]), 0);
    await addProcess(3, "kworker/0:1 (evil) x", "I", 2); // kernel thread, with a name full of parentheses
    await addProcess(77, "zombie", "Z", 1);
    assert.equal(await census.otherProcesses([]), 0);
    await addProcess(90, "daemon) S 1 (", "S", 1); // reparented to init; a name that tries to fake the fields
    await addProcess(91, "helper", "S", 40);
    assert.equal(await census.otherProcesses([]), 2);
    assert.equal(await census.otherProcesses([91, undefined]), 1, "listed plumbing is not counted");
  });
});
