import { Option, type Command } from "commander";
import { Sandbox, createSandbox, listSandboxes, type SandboxInfo, type SandboxState } from "@codecourier/sdk";
import { connection, withConnectionOptions, type ConnectionFlags } from "../connection.js";
import { collectKeyValues, parsePositiveInt } from "../parse.js";
import { withProgress } from "../progress.js";
import { printJson, printTable, shortTime } from "../table.js";

interface CreateFlags extends ConnectionFlags {
  template?: string;
  cpu?: number;
  memory?: number;
  disk?: number;
  env?: Record<string, string>;
  metadata?: Record<string, string>;
  timeout?: number;
  onTimeout?: "kill" | "pause";
  json?: boolean;
  allow?: string[];
  deny?: string[];
  internet?: boolean;
}

interface ListFlags extends ConnectionFlags {
  state?: SandboxState;
  metadata?: Record<string, string>;
  json?: boolean;
}

/** A handle on a sandbox as it is (a paused one stays paused until `resume`). */
const handle = (sandboxId: string, flags: ConnectionFlags) => Sandbox.get(sandboxId, connection(flags));

/** `codecourier create|ls|snapshot|pause|resume|fork|kill`: sandboxes on a CodeCourier server, through the SDK. */
export function registerSandboxCommands(program: Command): void {
  withConnectionOptions(program.command("create"))
    .description("Create a sandbox and print its id")
    .option("--template <name>", "template, name or name@version (default: base)")
    .option("--cpu <N>", "virtual CPUs", parsePositiveInt("cpu"))
    .option("--memory <MB>", "memory in MB (rounded up to a power of two)", parsePositiveInt("memory"))
    .option("--disk <MB>", "root disk in MB (default and minimum: the template's; rounded up to whole GiB)", parsePositiveInt("disk"))
    .option("-e, --env <KEY=VALUE...>", "environment variables of every command in the sandbox", collectKeyValues("env"))
    .option("--metadata <KEY=VALUE...>", "metadata, to find the sandbox by (`ls --metadata`)", collectKeyValues("metadata"))
    .option("--timeout <ms>", "end (or pause, see --on-timeout) the sandbox this long after creation", parsePositiveInt("timeout"))
    .addOption(new Option("--on-timeout <action>", "what the timeout does (default: kill)").choices(["kill", "pause"]))
    .option("--allow <entry...>", "network allow entries (domain, *.domain, CIDR or *, optional :port); default: the template's policy")
    .option("--deny <entry...>", "network deny entries (they win over allow)")
    .option("--internet", "allow every public address")
    .option("--json", "print the sandbox as JSON instead of its id")
    .action(async (flags: CreateFlags) => {
      const network =
        flags.allow || flags.deny || flags.internet ? { internet: flags.internet ?? false, allow: flags.allow ?? [], deny: flags.deny ?? [] } : undefined;
      const sandbox = await withProgress(`creating a sandbox from template ${flags.template ?? "base"}`, () =>
        createSandbox({
          ...connection(flags),
          template: flags.template,
          cpu: flags.cpu,
          memoryMB: flags.memory,
          diskMB: flags.disk,
          env: flags.env,
          metadata: flags.metadata,
          timeoutMs: flags.timeout,
          onTimeout: flags.onTimeout,
          network,
        }),
      );
      if (flags.json) printJson(await sandbox.info());
      else console.log(sandbox.sandboxId);
    });

  withConnectionOptions(program.command("ls"))
    .description("List sandboxes (default: the running and paused ones)")
    .addOption(new Option("--state <state>", "only sandboxes in this state").choices(["running", "paused", "stopped", "lost"]))
    .option("--metadata <KEY=VALUE...>", "only sandboxes with all these metadata entries", collectKeyValues("metadata"))
    .option("--json", "print JSON (an array of sandboxes)")
    .action(async (flags: ListFlags) => {
      const sandboxes: SandboxInfo[] = [];
      let cursor: string | undefined;
      do {
        const page = await listSandboxes({ state: flags.state, metadata: flags.metadata, limit: 1000, cursor }, connection(flags));
        sandboxes.push(...page.sandboxes);
        cursor = page.nextCursor ?? undefined;
      } while (cursor !== undefined);
      if (flags.json) return printJson(sandboxes);
      printTable(
        ["ID", "STATE", "TEMPLATE", "CPU", "MEMORY", "CREATED"],
        sandboxes.map((s) => [s.sandboxId, s.state, s.template, String(s.cpu), `${s.memoryMB}MB`, shortTime(s.createdAt)]),
      );
    });

  withConnectionOptions(program.command("snapshot"))
    .summary("Snapshot a sandbox; prints the snapshot's id")
    .description("Snapshot a sandbox (it keeps running) and print the snapshot's id")
    .argument("<id>", "the sandbox")
    .action(async (id: string, flags: ConnectionFlags) => {
      const snapshotId = await withProgress(`snapshotting ${id}`, async () => (await handle(id, flags)).snapshot());
      console.log(snapshotId);
    });

  withConnectionOptions(program.command("pause"))
    .summary("Pause a sandbox")
    .description("Pause a sandbox: its memory is saved and its VM stops until resume (or exec)")
    .argument("<id>", "the sandbox")
    .action(async (id: string, flags: ConnectionFlags) => {
      await withProgress(`pausing ${id}`, async () => (await handle(id, flags)).pause());
      console.log(id);
    });

  withConnectionOptions(program.command("resume"))
    .summary("Resume a paused sandbox")
    .description("Resume a paused sandbox, same id, processes and files intact (a running one is left as it is)")
    .argument("<id>", "the sandbox")
    .action(async (id: string, flags: ConnectionFlags) => {
      await withProgress(`resuming ${id}`, () => Sandbox.connect(id, connection(flags)));
      console.log(id);
    });

  withConnectionOptions(program.command("fork"))
    .summary("Fork a sandbox into new ones; prints their ids")
    .description("Fork a sandbox into new ones that start where it is now (memory, processes, files); prints their ids")
    .argument("<id>", "the sandbox")
    .option("-n, --count <N>", "how many forks", parsePositiveInt("count"), 1)
    .option("--json", "print the new sandboxes as JSON (an array) instead of their ids")
    .action(async (id: string, flags: ConnectionFlags & { count: number; json?: boolean }) => {
      const forks = await withProgress(`forking ${id} ×${flags.count}`, async () => (await handle(id, flags)).fork(flags.count));
      if (flags.json) printJson(await Promise.all(forks.map((fork) => fork.info())));
      else for (const fork of forks) console.log(fork.sandboxId);
    });

  withConnectionOptions(program.command("kill"))
    .description("End a sandbox for good (one that has already stopped is no error)")
    .argument("<id>", "the sandbox")
    .action(async (id: string, flags: ConnectionFlags) => {
      await (await handle(id, flags)).kill(); // the server answers an already-ended sandbox's kill as done
      console.log(id);
    });
}
