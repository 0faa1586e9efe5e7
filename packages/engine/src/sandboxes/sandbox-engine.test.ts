// Snapshot engine with real VMs: templates, clones, pause/resume, snapshot, fork, GC, restart safety.
// Runs in its own data dir (images shared by symlink) so that recovery never touches other tests' VMs.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { isolatedDataDir } from "../testing/isolated-data-dir.js";
import { ensureGuestImage, type GuestImage } from "../images/guest-image.js";
import { runTool } from "../util/run-tool.js";
import { DataDirLockedError } from "../state/data-dir-lock.js";
import { hostCgroups } from "../vmm/cgroups/host-cgroups.js";
import { listVmCgroups } from "../vmm/cgroups/vm-cgroup.js";
import { SnapshotIncompatibleError, SnapshotInUseError, SandboxStateError } from "./errors.js";
import { findEngineQemus } from "./host-qemu-scan.js";
import { SandboxEngine, type RunningSandbox } from "./sandbox-engine.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");
const TEMPLATE_MEMORY_MIB = 256;

/**
 * Where the host offers cgroups: each sandbox's QEMU is alone in its own cgroup, with the sandbox's shape as limits.
 * Returns the cgroup directories (none without host support).
 */
function assertOwnCgroups(sandboxes: RunningSandbox[], shape: { cpus: number; memoryMiB: number }): string[] {
  if (!hostCgroups().available) return [];
  const directories = sandboxes.flatMap((sandbox) => {
    const { vm } = sandbox;
    assert.ok(vm.limits && vm.cgroup, `${sandbox.id} runs without limits`);
    assert.deepEqual([vm.limits.cpus, vm.limits.guestMemoryMiB], [shape.cpus, shape.memoryMiB]);
    assert.deepEqual(vm.cgroup.processes(), [vm.pid]);
    return vm.cgroup.directories;
  });
  assert.equal(new Set(directories).size, directories.length, "two sandboxes share a cgroup");
  return directories;
}

async function shell(sandbox: RunningSandbox, command: string): Promise<string> {
  const result = await sandbox.agent.run({ shell: command, stdin: false });
  assert.equal(result.exitCode, 0, `${command} failed: ${result.stderr.toString()}`);
  return result.stdout.toString();
}

/** Reads the counter file twice, some time apart, and checks it moved. */
async function assertCounterRuns(sandbox: RunningSandbox, file: string): Promise<number> {
  const first = Number(await shell(sandbox, `cat ${file}`));
  await sleep(600);
  const second = Number(await shell(sandbox, `cat ${file}`));
  assert.ok(second > first, `counter in ${file} stands still (${first} → ${second})`);
  return second;
}

/** Checks the writer's log holds 0..n-1, one number per line, none missing or repeated. */
async function assertLogContiguous(sandbox: RunningSandbox, previousLength: number): Promise<number> {
  const lines = (await shell(sandbox, "cat /root/writer.log")).split("\n").filter(Boolean);
  lines.forEach((line, index) => assert.equal(line, String(index), `writer.log line ${index} is ${JSON.stringify(line)}`));
  assert.ok(lines.length >= previousLength, `writer.log shrank from ${previousLength} to ${lines.length} lines`);
  return lines.length;
}

describe("snapshot engine with real VMs", () => {
  const previousHome = process.env.CODECOURIER_HOME;
  let home: string;
  let image: GuestImage;
  let engine: SandboxEngine;
  let templateId: string;

  before(async () => {
    image = await ensureGuestImage(() => {});
    home = await isolatedDataDir("ccsnap-");
    process.env.CODECOURIER_HOME = home;
    engine = await SandboxEngine.open({ image, maxChainDepth: 4 });
    templateId = (await engine.createTemplate({ memoryMiB: TEMPLATE_MEMORY_MIB })).id;
  });

  after(async () => {
    await engine?.close();
    if (previousHome === undefined) delete process.env.CODECOURIER_HOME;
    else process.env.CODECOURIER_HOME = previousHome;
    if (home) await rm(home, { recursive: true, force: true });
  });

  it("keeps every byte through 20 pause/resume cycles with a writer running, and the filesystem stays clean", async () => {
    let sandbox = await engine.create(templateId);
    const data = randomBytes(1024 * 1024);
    await sandbox.agent.writeFile("/root/data.bin", data);
    const writer = sandbox.agent.exec({
      shell: "i=0; while :; do echo $i >> /root/writer.log; i=$((i+1)); sleep 0.01; done",
      background: true,
      stdin: false,
    });
    const writerId = await writer.id;
    let logLength = 0;
    for (let cycle = 1; cycle <= 20; cycle++) {
      await engine.pause(sandbox.id);
      assert.equal(engine.sandboxInfo(sandbox.id).state, "paused");
      sandbox = await engine.resume(sandbox.id);
      assert.equal(sha256(await sandbox.agent.readFileBuffer("/root/data.bin")), sha256(data), `data.bin changed in cycle ${cycle}`);
      logLength = await assertLogContiguous(sandbox, logLength);
    }
    await sleep(300);
    assert.ok((await assertLogContiguous(sandbox, logLength)) > logLength, "the writer stopped writing");
    // 20 pauses froze 20 layers; flattening past maxChainDepth (4) keeps the chain short.
    const chain = JSON.parse((await runTool("qemu-img", ["info", "-U", "--backing-chain", "--output=json", sandbox.vm.rootDisk])).toString()) as unknown[];
    assert.ok(chain.length <= 4 + 2, `backing chain has ${chain.length} files`);
    const commands = await sandbox.agent.listCommands();
    assert.ok(commands.some((c) => c.id === writerId && c.running), "the writer is no longer running");

    // Filesystem check: stop the writer, snapshot (synced, frozen layer), and fsck a raw copy of that disk.
    // (The bracket keeps the pattern from matching this very shell's command line.)
    await shell(sandbox, "pkill -f 'writer[.]log'; sync");
    const snapshot = await engine.snapshot(sandbox.id);
    const raw = join(home, "fsck.raw");
    await runTool("qemu-img", ["convert", "-U", "-O", "raw", engine.snapshotFiles(snapshot.id).disk, raw]);
    await runTool("e2fsck", ["-fy", raw]).catch(() => {}); // replays the journal of a mounted-at-snapshot filesystem
    await runTool("e2fsck", ["-fn", raw]); // throws on any remaining error
    await rm(raw, { force: true });
    await engine.kill(sandbox.id);
    await engine.deleteSnapshot(snapshot.id);
  });

  it("keeps a background process running through 5 pause/resume cycles and a fork, and re-attaches to it", async () => {
    let sandbox = await engine.create(templateId);
    const counter = sandbox.agent.exec({
      shell: "i=0; while :; do echo $i > /root/counter; echo tick $i; i=$((i+1)); sleep 0.1; done",
      background: true,
      stdin: false,
    });
    const counterId = await counter.id;
    await assertCounterRuns(sandbox, "/root/counter");
    for (let cycle = 1; cycle <= 5; cycle++) {
      await engine.pause(sandbox.id);
      sandbox = await engine.resume(sandbox.id);
      await assertCounterRuns(sandbox, "/root/counter");
    }
    // Re-attach from the new session: output from now on, then the exit code.
    const attached = sandbox.agent.attach(counterId);
    let text = "";
    for await (const chunk of attached.stdout) {
      text += String(chunk);
      if (/tick \d+\n.*tick \d+\n/s.test(text)) break;
    }
    assert.match(text, /tick \d+/);
    const snapshot = await engine.snapshot(sandbox.id);
    const [fork] = await engine.fork(snapshot.id, 1);
    assert.ok(fork);
    await assertCounterRuns(fork, "/root/counter");
    const forkAttached = fork.agent.attach(counterId);
    await shell(fork, "pkill -f 'echo [t]ick'");
    const exit = await forkAttached.wait();
    assert.equal(exit.signal, "SIGTERM");
    await assertCounterRuns(sandbox, "/root/counter"); // the original is independent of its fork
    await Promise.all([engine.kill(fork.id), engine.kill(sandbox.id)]);
    await engine.deleteSnapshot(snapshot.id);
  });

  it("gives two clones different random bytes, hostnames and machine ids, and a clock within 1 s of the host", async () => {
    const clones = await Promise.all([engine.create(templateId), engine.create(templateId)]);
    const seen = await Promise.all(
      clones.map(async (clone) => {
        const out = await shell(clone, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; cat /etc/machine-id; date +%s.%N");
        const hostNow = Date.now() / 1000;
        const [random, hostname, machineId, clock] = out.trim().split("\n");
        return { random, hostname, machineId, clockSkew: Math.abs(Number(clock) - hostNow) };
      }),
    );
    const [a, b] = seen;
    assert.ok(a && b);
    assert.notEqual(a.random, b.random);
    assert.notEqual(a.hostname, b.hostname);
    assert.notEqual(a.machineId, b.machineId);
    assert.equal(a.hostname, clones[0]!.id);
    for (const clone of seen) assert.ok(clone.clockSkew < 1, `guest clock is ${clone.clockSkew.toFixed(3)} s off`);
    await Promise.all(clones.map((clone) => engine.kill(clone.id)));
  });

  it("forks 10 independent sandboxes from one snapshot", async () => {
    const source = await engine.create(templateId);
    await shell(source, "echo shared > /root/shared.txt");
    const snapshot = await engine.snapshot(source.id);
    await shell(source, "echo after > /root/after-snapshot.txt");
    const forks = await engine.fork(snapshot.id, 10);
    assert.equal(new Set(forks.map((f) => f.id)).size, 10);
    await Promise.all(forks.map((fork, i) => shell(fork, `echo ${i} > /root/mine.txt`)));
    for (const [i, fork] of forks.entries()) {
      assert.equal(await shell(fork, "cat /root/shared.txt /root/mine.txt"), `shared\n${i}\n`);
      assert.equal(await shell(fork, "test -e /root/after-snapshot.txt && echo yes || echo no"), "no\n");
    }
    // Every restored QEMU has its own cgroup; none is left once they end (nor the snapshot's receiving QEMU's).
    const cgroups = assertOwnCgroups([...forks, source], { cpus: 1, memoryMiB: TEMPLATE_MEMORY_MIB });
    await Promise.all([...forks, source].map((sandbox) => engine.kill(sandbox.id)));
    for (const dir of cgroups) assert.equal(existsSync(dir), false, `${dir} left behind`);
    assert.deepEqual(listVmCgroups(), []);
    await engine.deleteSnapshot(snapshot.id);
  });

  it("refuses to delete a snapshot in use; garbage collection frees exactly what nothing reaches", async () => {
    // Start from a known state even if an earlier test failed half-way.
    for (const leftover of engine.listSandboxes()) await engine.kill(leftover.id);
    for (const leftover of engine.listSnapshots()) if (leftover.id !== templateId) await engine.deleteSnapshot(leftover.id);
    const source = await engine.create(templateId);
    const snapshot = await engine.snapshot(source.id);
    const [fork] = await engine.fork(snapshot.id, 1);
    assert.ok(fork);
    await assert.rejects(engine.deleteSnapshot(snapshot.id), SnapshotInUseError);
    await assert.rejects(engine.deleteSnapshot(templateId), SnapshotInUseError);
    const snapshotFiles = engine.snapshotFiles(snapshot.id);
    assert.ok(existsSync(snapshotFiles.memory) && existsSync(snapshotFiles.disk), "a refused delete changed nothing");

    await engine.kill(fork.id);
    await engine.kill(source.id);
    await engine.deleteSnapshot(snapshot.id);
    const removed = await engine.collectGarbage();
    assert.ok(removed.includes(snapshotFiles.disk), "the deleted snapshot's disk layer was not collected");
    assert.ok(!existsSync(snapshotFiles.disk) && !existsSync(snapshotFiles.dir));
    const template = engine.snapshotFiles(templateId);
    for (const path of [template.memory, template.deviceState, template.disk]) assert.ok(existsSync(path), `GC removed ${path}`);
    assert.deepEqual(await readdir(join(home, "disks")), [`${template.disk.split("/").pop()}`], "only the template's layer is left");
    assert.deepEqual(await readdir(join(home, "run")), []);
    const clone = await engine.create(templateId);
    assert.equal(await shell(clone, "echo ok"), "ok\n");
    await engine.kill(clone.id);
  });

  it("refuses with a clear error a snapshot saved with another device layout or kernel", async () => {
    // One engine per data dir: the others below open it in turn.
    await assert.rejects(SandboxEngine.open({ image }), DataDirLockedError);
    await engine.close();
    try {
      const otherLayout = await SandboxEngine.open({ image, tcgCpuModel: "qemu64", accel: engine.accel });
      try {
        await assert.rejects(otherLayout.create(templateId), (e: unknown) => e instanceof SnapshotIncompatibleError && /layout/.test(e.message));
      } finally {
        await otherLayout.close();
      }
      const otherKernel = { ...image, kernelPath: image.kernelPath.replace(/kernel-[0-9a-f]+/, "kernel-0000000000000000") };
      const third = await SandboxEngine.open({ image: otherKernel, accel: engine.accel });
      try {
        await assert.rejects(third.create(templateId), (e: unknown) => e instanceof SnapshotIncompatibleError && /kernel/.test(e.message));
      } finally {
        await third.close();
      }
    } finally {
      engine = await SandboxEngine.open({ image, maxChainDepth: 4 });
    }
    const stillWorks = await engine.create(templateId); // the refusals changed nothing
    assert.equal(await shell(stillWorks, "echo ok"), "ok\n");
    await engine.kill(stillWorks.id);
  });

  it("after kill -9 of the engine in the middle of creates, a restart leaves no leaked QEMU, layer or socket", async () => {
    // The crashing engine runs in a child process on this data dir; ours must not hold VMs meanwhile.
    await engine.close();
    const child = spawn(process.execPath, [fileURLToPath(new URL("./testing/create-loop.js", import.meta.url)), templateId], {
      env: { ...process.env, CODECOURIER_HOME: home },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let created = 0;
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (chunk: Buffer) => {
        created += (String(chunk).match(/created /g) ?? []).length;
        if (created >= 2) resolve();
      });
      child.once("exit", (code) => reject(new Error(`create loop exited early (${code})`)));
    });
    await sleep(150); // somewhere inside the next create
    child.kill("SIGKILL");
    await new Promise((resolve) => child.once("exit", resolve));

    engine = await SandboxEngine.open({ image, maxChainDepth: 4 });
    const running = engine.listSandboxes().filter((s) => s.state === "running");
    assert.ok(running.length >= 2, `expected the created sandboxes to be re-attached, got ${JSON.stringify(running)}`);
    for (const sandbox of running) assert.equal(await shell(engine.sandbox(sandbox.id), "echo alive"), "alive\n");
    const qemus = findEngineQemus(join(home, "run"));
    assert.equal(qemus.length, running.length, "every QEMU belongs to a re-attached sandbox");
    assert.deepEqual((await readdir(join(home, "run"))).sort(), qemus.map((q) => q.runDir.split("/").pop()).sort(), "no orphaned runtime dirs");
    const disks = await readdir(join(home, "disks"));
    assert.equal(disks.length, 1 + running.length, "template layer plus one writable layer per running sandbox");
    // Re-attached QEMUs are in cgroups of their shape; the cgroups of the QEMUs recovery killed are gone.
    const adoptedCgroups = assertOwnCgroups(
      running.map((s) => engine.sandbox(s.id)),
      { cpus: 1, memoryMiB: TEMPLATE_MEMORY_MIB },
    );
    assert.deepEqual(listVmCgroups().sort(), adoptedCgroups.sort(), "only the re-attached sandboxes have cgroups");
    for (const sandbox of running) await engine.kill(sandbox.id);
    assert.deepEqual(findEngineQemus(join(home, "run")), []);
    assert.deepEqual(listVmCgroups(), []);
  });

  it("stops the vCPUs of an idle sandbox, wakes it for the next request with a correct clock, and never sleeps a busy one", async () => {
    const sandbox = await engine.create(templateId);
    const vmStatus = async () => (await sandbox.vm.qmp.execute<{ status: string }>("query-status")).status;
    for (let i = 0; i < 100 && !sandbox.vm.asleep; i++) await sleep(100);
    assert.ok(sandbox.vm.asleep, "an idle sandbox was not put to sleep");
    assert.equal(await vmStatus(), "paused");
    await sleep(1500); // the guest clock stands still meanwhile
    const guestNow = Number(await shell(sandbox, "date +%s.%N"));
    assert.ok(Math.abs(guestNow - Date.now() / 1000) < 1, `guest clock is ${(guestNow - Date.now() / 1000).toFixed(3)} s off after waking`);
    assert.equal(await vmStatus(), "running");

    // A daemon left behind by a command (reparented to init, unknown to the agent) keeps it awake.
    await shell(sandbox, "setsid sleep 600 > /dev/null 2>&1 < /dev/null &");
    await sleep(5000);
    assert.equal(sandbox.vm.asleep, false, "a sandbox with a process running was put to sleep");
    assert.equal(await vmStatus(), "running");
    await engine.kill(sandbox.id);
  });

  it("keeps a template's start command running in its clones; a failing ready check leaves nothing behind", async () => {
    const template = await engine.createTemplate({
      memoryMiB: TEMPLATE_MEMORY_MIB,
      startCommand: "i=0; while :; do echo $i > /root/started; i=$((i+1)); sleep 0.1; done",
      readyCheck: "test -s /root/started",
    });
    const clone = await engine.create(template.id);
    await assertCounterRuns(clone, "/root/started");
    await engine.kill(clone.id);
    await engine.deleteSnapshot(template.id);

    const snapshotsBefore = engine.listSnapshots().length;
    await assert.rejects(engine.createTemplate({ memoryMiB: TEMPLATE_MEMORY_MIB, readyCheck: "false", readyTimeoutMs: 1000 }), /ready check/);
    assert.equal(engine.listSnapshots().length, snapshotsBefore);
    assert.deepEqual(findEngineQemus(join(home, "run")), []);
  });

  it("pause and resume refuse the wrong state and change nothing", async () => {
    const sandbox = await engine.create(templateId);
    await assert.rejects(engine.resume(sandbox.id), SandboxStateError);
    await engine.pause(sandbox.id);
    await assert.rejects(engine.pause(sandbox.id), SandboxStateError);
    await assert.rejects(engine.snapshot(sandbox.id), SandboxStateError);
    const resumed = await engine.resume(sandbox.id);
    assert.equal(await shell(resumed, "echo ok"), "ok\n");
    await engine.kill(sandbox.id);
  });
});
