import type { Command } from "commander";
import { Sandbox } from "@codecourier/sdk";
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
        "signal N, 124 when it ran past --timeout. stdin, when it is not a terminal, is sent whole, as UTF-8 text.",
    )
    .argument("<id>", "the sandbox")
    .argument("<command...>", "the command (after --)")
    .option("--cwd <dir>", "working directory in the sandbox (default: /root)")
    .option("-e, --env <KEY=VALUE...>", "environment variables, on top of the sandbox's", collectKeyValues("env"))
    .option("--user <user>", "the user to run as")
    .option("--timeout <ms>", "kill the command after this long (exit status 124)", parsePositiveInt("timeout"))
    .option("--no-stdin", "do not forward stdin")
    .action(async (id: string, command: string[], flags: ExecFlags) => {
      const stdin = flags.stdin && !process.stdin.isTTY ? await readStdin() : undefined;
      const sandbox = await Sandbox.connect(id, connection(flags));
      const result = await sandbox.runCommand(command.length === 1 ? command[0]! : command, {
        cwd: flags.cwd,
        env: flags.env,
        user: flags.user,
        timeoutMs: flags.timeout,
        stdin: stdin || undefined,
      });
      process.stdout.write(result.stdout);
      process.stderr.write(result.stderr);
      if (result.timedOut) process.stderr.write(`codecourier: the command timed out${flags.timeout ? ` after ${flags.timeout} ms` : ""}\n`);
      // Not process.exit(): stdout may be a pipe still being written to.
      process.exitCode = commandExitStatus(result);
    });
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}
