// Snapshot and fork, pause and resume, listing by metadata, `await using` and kill. The costly checks (each saves
// or restores a VM), so they run once each, on the main sandbox and one fork.
import { NotFoundError, listSandboxes, listSnapshots } from "../../index.js";
import { assertEqual, assertOk, assertRejects, mainSandbox, type Check } from "../harness.js";

export const lifecycleChecks: Check[] = [
  {
    name: "snapshot → fork(1): the fork sees a file written before the snapshot; await using kills it",
    async run(context) {
      const sandbox = mainSandbox(context);
      await sandbox.files.write("before-snapshot.txt", `written by ${context.runtime}\n`);
      const snapshotId = await sandbox.snapshot();
      assertOk(/\S/.test(snapshotId), "snapshot() gives an id");
      const snapshots = await listSnapshots(context.connection);
      assertOk(snapshots.some((s) => s.snapshotId === snapshotId && s.sandboxId === sandbox.sandboxId), `listSnapshots has ${snapshotId}`);
      assertEqual((await sandbox.info()).state, "running", "the sandbox keeps running after its snapshot");

      const forks = await sandbox.fork(1);
      assertEqual(forks.length, 1, "fork(1) gives one sandbox");
      const forkId = forks[0]!.sandboxId;
      {
        await using fork = forks[0]!;
        context.cleanup.push(fork);
        assertOk(fork.sandboxId !== sandbox.sandboxId, "the fork is a new sandbox");
        assertEqual((await fork.runCommand(["cat", "before-snapshot.txt"])).stdout, `written by ${context.runtime}\n`, "the fork's copy of the file");
        // The fork's files are its own from here on.
        await fork.files.write("before-snapshot.txt", "changed in the fork\n");
      }
      assertEqual(await sandbox.files.read("before-snapshot.txt"), `written by ${context.runtime}\n`, "the source is untouched by the fork's write");
      const after = await listSandboxes({}, context.connection);
      assertOk(!after.sandboxes.some((s) => s.sandboxId === forkId), "leaving the `await using` block killed the fork (no longer live)");
    },
  },
  {
    name: "pause → resume: same sandbox, files intact",
    async run(context) {
      const sandbox = mainSandbox(context);
      await sandbox.files.write("before-pause.txt", "still here\n");
      assertEqual((await sandbox.pause()).state, "paused", "pause() answers paused");
      assertEqual((await sandbox.info()).state, "paused", "info() while paused");
      const paused = await listSandboxes({ state: "paused", metadata: { suite: context.runId } }, context.connection);
      assertEqual(paused.sandboxes.map((s) => s.sandboxId), [sandbox.sandboxId], "listSandboxes({ state: paused }) of this run");
      assertEqual((await sandbox.resume()).state, "running", "resume() answers running");
      assertEqual((await sandbox.runCommand(["cat", "before-pause.txt"])).stdout, "still here\n", "a file written before the pause");
    },
  },
  {
    name: "listSandboxes with a metadata filter",
    async run(context) {
      const sandbox = mainSandbox(context);
      const mine = await listSandboxes({ metadata: { suite: context.runId } }, context.connection);
      assertEqual(mine.sandboxes.map((s) => s.sandboxId), [sandbox.sandboxId], "this run's live sandboxes");
      assertEqual(mine.sandboxes[0]!.metadata.runtime, context.runtime, "their metadata");
      const both = await listSandboxes({ metadata: { suite: context.runId, runtime: context.runtime } }, context.connection);
      assertEqual(both.sandboxes.length, 1, "two filter entries that both match");
      const none = await listSandboxes({ metadata: { suite: context.runId, runtime: "no-such-runtime" } }, context.connection);
      assertEqual(none.sandboxes, [], "a filter entry that does not match");
    },
  },
  {
    name: "kill: the sandbox stops and refuses commands",
    async run(context) {
      const sandbox = mainSandbox(context);
      await sandbox.kill();
      assertEqual((await sandbox.info()).state, "stopped", "info() after kill");
      await assertRejects(sandbox.runCommand("true"), NotFoundError, "a command in a killed sandbox");
      assertEqual((await listSandboxes({ metadata: { suite: context.runId } }, context.connection)).sandboxes, [], "no live sandboxes left");
      await sandbox.kill(); // A second kill is no error (the route is idempotent).
    },
  },
];
