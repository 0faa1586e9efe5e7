import type { Command } from "commander";
import { Sandbox } from "@codecourier/sdk";
import { connection, withConnectionOptions, type ConnectionFlags } from "../connection.js";
import { printJson, printTable, shortTime } from "../table.js";

interface LogsFlags extends ConnectionFlags {
  follow?: boolean;
  json?: boolean;
}

/** `codecourier logs <id> [pid]`: a process's output (kept by the server), or the sandbox's processes. */
export function registerLogsCommand(program: Command): void {
  withConnectionOptions(program.command("logs"))
    .summary("Print a process's output, or list a sandbox's processes")
    .description(
      "With a pid, print that process's output from the start (the server keeps the last 4 MiB): stdout to stdout, " +
        "stderr to stderr; --follow waits for more until it exits. Without one, list the sandbox's processes.",
    )
    .argument("<id>", "the sandbox")
    .argument("[pid]", "the process (see the list)")
    .option("-f, --follow", "keep printing new output until the process exits")
    .option("--json", "print the process list as JSON")
    .action(async (id: string, pid: string | undefined, flags: LogsFlags) => {
      const sandbox = await Sandbox.connect(id, connection(flags));
      if (pid === undefined) {
        const processes = await sandbox.processes.list();
        if (flags.json) return printJson(processes);
        const status = (p: (typeof processes)[number]) =>
          p.running ? "running" : p.signal ? `killed (${p.signal})` : `exited ${p.exitCode ?? "?"}${p.timedOut ? " (timeout)" : ""}`;
        return printTable(
          ["PID", "STATUS", "STARTED", "COMMAND"],
          processes.map((p) => [p.pid, status(p), shortTime(p.startedAt), p.command ?? "(started elsewhere)"]),
        );
      }
      const target = await sandbox.processes.connect(pid);
      for await (const chunk of target.output({ follow: flags.follow ?? false })) {
        (chunk.stream === "stdout" ? process.stdout : process.stderr).write(chunk.data);
      }
    });
}
