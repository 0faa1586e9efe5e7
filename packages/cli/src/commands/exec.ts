import type { Command } from "commander";
import { Sandbox, type CommandProcess } from "@codecourier/sdk";
import { connection, withConnectionOptions, type ConnectionFlags } from "../connection.js";
import { commandExitStatus } from "../exit-status.js";
import { collectKeyValues, parsePositiveInt } from "../parse.js";

interface ExecFlags extends ConnectionFlags {
  cwd?: string;
  env?: Record<string, string>;
  user?: string;
  timeout?: number;
  stdin: boolean;
}

/** `codecourier exec <id> -- <command...>`: runs a command to completion in a sandbox and passes on its exit status. */
export function registerExecCommand(program: Command): void {
  withConnectionOptions(program.command("exec"))
    .summary("Run a command in a sandbox; exits with the command's exit code")
    .description(
      "Run a command in a sandbox (a paused one is resumed). One argument is a /bin/sh -c command line, several are " +
        "an argv run without a shell. Prints its stdout and stderr and exits with its exit code: 128+N when killed by " +
        "signal N, 124 when it ran past --timeout. Output is streamed as it comes, uncapped (binary too); stdin, when it is not a terminal, is streamed to the command.",
    )
    .argument("<id>", "the sandbox")
    .argument("<command...>", "the command (after --)")
    .option("--cwd <dir>", "working directory in the sandbox (default: /root)")
    .option("-e, --env <KEY=VALUE...>", "environment variables, on top of the sandbox's", collectKeyValues("env"))
    .option("--user <user>", "the user to run as")
    .option("--timeout <ms>", "kill the command after this long (exit status 124)", parsePositiveInt("timeout"))
    .option("--no-stdin", "do not forward stdin")
    .action(async (id: string, command: string[], flags: ExecFlags) => {
      const forwardStdin = flags.stdin && !process.stdin.isTTY;
      const sandbox = await Sandbox.connect(id, connection(flags));
      const started = await sandbox.processes.start(command.length === 1 ? command[0]! : command, {
        cwd: flags.cwd,
        env: flags.env,
        user: flags.user,
        timeoutMs: flags.timeout,
        keepStdinOpen: forwardStdin,
      });
      const stdinDone = forwardStdin ? pumpStdin(started) : Promise.resolve();
      // Output is passed on as raw bytes, as it comes: the command may print binary data or a progress bar. Nothing
      // caps it (unlike a run-to-completion answer); only a reader that falls far behind misses some, and is told.
      let missed = false;
      const onTruncated = () => (missed = true);
      for await (const chunk of started.output({ onTruncated })) (chunk.stream === "stdout" ? process.stdout : process.stderr).write(chunk.data);
      if (missed) process.stderr.write("codecourier: some output was dropped before it could be shown (the server keeps only the last 4 MiB of a process's output)\n");
      await stdinDone.catch(() => undefined); // the command may exit before reading all of its input
      const result = await started.info();
      if (result.timedOut) process.stderr.write(`codecourier: the command timed out${flags.timeout ? ` after ${flags.timeout} ms` : ""}\n`);
      // Not process.exit(): stdout may be a pipe still being written to.
      process.exitCode = commandExitStatus(result);
    });
}

/** Sends this program's stdin to the process as it is read (in pieces of at most 512 KiB), then EOF. */
async function pumpStdin(target: CommandProcess): Promise<void> {
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    for (let offset = 0; offset < chunk.length; offset += 512 * 1024) await target.sendStdin(chunk.subarray(offset, offset + 512 * 1024));
  }
  await target.closeStdin();
}
