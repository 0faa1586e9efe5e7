import type { Command } from "commander";
import { deleteSnapshot, listSnapshots } from "@codecourier/sdk";
import { connection, withConnectionOptions, type ConnectionFlags } from "../connection.js";
import { printJson, printTable, shortTime } from "../table.js";

/** `codecourier snapshots [--json]` lists this key's snapshots; `codecourier snapshots rm <snapshotId>` deletes one. */
export function registerSnapshotCommands(program: Command): void {
  const snapshots = withConnectionOptions(program.command("snapshots"))
    .description("List snapshots (`snapshots rm <snapshotId>` deletes one)")
    .option("--json", "print JSON (an array of snapshots)")
    // Its options go before `rm`: after it they are rm's own (`snapshots rm ID --url …`).
    .enablePositionalOptions()
    .action(async (flags: ConnectionFlags & { json?: boolean }) => {
      const list = await listSnapshots(connection(flags));
      if (flags.json) return printJson(list);
      printTable(
        ["SNAPSHOT", "SANDBOX", "CREATED"],
        list.map((s) => [s.snapshotId, s.sandboxId, shortTime(s.createdAt)]),
      );
    });

  withConnectionOptions(snapshots.command("rm"))
    .description("Delete a snapshot, freeing its disk (refused while sandboxes or snapshots build on it)")
    .argument("<snapshotId>", "the snapshot, as `snapshots` lists it")
    .action(async (snapshotId: string, flags: ConnectionFlags) => {
      await deleteSnapshot(snapshotId, connection(flags));
      console.log(snapshotId);
    });
}
