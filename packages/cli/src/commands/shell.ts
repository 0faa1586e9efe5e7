import type { Command } from "commander";
import { Sandbox, type PtyProcess } from "@codecourier/sdk";
import { connection, withConnectionOptions, type ConnectionFlags } from "../connection.js";
import { commandExitStatus } from "../exit-status.js";
import { fail } from "../progress.js";

interface ShellFlags extends ConnectionFlags {
  cmd?: string;
  cwd?: string;
  user?: string;
}

/** `codecourier shell <id>`: an interactive terminal in a sandbox that follows this terminal's size. */
export function registerShellCommand(program: Command): void {
  withConnectionOptions(program.command("shell"))
    .summary("Open an interactive shell in a sandbox")
    .description(
      "Open an interactive shell on a terminal in a sandbox (a paused one is resumed). Keys go to the sandbox as they " +
        "are typed (Ctrl-C included); resizing this terminal resizes the sandbox's. Exits with the shell's exit code.",
    )
    .argument("<id>", "the sandbox")
    .option("--cmd <command>", "what to run instead of a login shell")
    .option("--cwd <dir>", "working directory (default: /root)")
    .option("--user <user>", "the user to run as")
    .action(async (id: string, flags: ShellFlags) => {
      if (!process.stdin.isTTY || !process.stdout.isTTY) fail("shell needs a terminal on stdin and stdout; use `codecourier exec` in scripts", 2);
      const sandbox = await Sandbox.connect(id, connection(flags));
      const shell = await sandbox.pty.create({
        ...terminalSize(),
        cmd: flags.cmd,
        cwd: flags.cwd,
        user: flags.user,
      });
      const stopForwarding = forwardTerminal(shell);
      try {
        for await (const chunk of shell.output()) process.stdout.write(chunk.data);
      } finally {
        stopForwarding();
      }
      process.exitCode = commandExitStatus(await shell.info());
    });
}

/**
 * Puts this terminal in raw mode and forwards keys and size changes to the sandbox's terminal, in order: each key
 * request waits for the one before, and keys typed meanwhile go together in the next one.
 */
function forwardTerminal(shell: PtyProcess): () => void {
  let pending: Buffer[] = [];
  let sending: Promise<void> | undefined;
  const flush = () => {
    if (sending !== undefined || pending.length === 0) return;
    const keys = Buffer.concat(pending);
    pending = [];
    sending = shell
      .sendInput(keys)
      .catch(() => undefined) // the shell has exited; its output stream ends and we stop
      .finally(() => {
        sending = undefined;
        flush();
      });
  };
  const onKeys = (data: Buffer) => {
    pending.push(data);
    flush();
  };
  const onResize = () => void shell.resize(terminalSize()).catch(() => undefined);
  process.stdin.setRawMode(true);
  process.stdin.on("data", onKeys);
  process.stdin.resume();
  process.stdout.on("resize", onResize);
  return () => {
    process.stdin.off("data", onKeys);
    process.stdout.off("resize", onResize);
    process.stdin.setRawMode(false);
    process.stdin.pause();
  };
}

/** This terminal's size; 24×80 when it reports none (a terminal whose size was never set reads as 0×0). */
function terminalSize(): { rows: number; cols: number } {
  const rows = process.stdout.rows || 24;
  const cols = process.stdout.columns || 80;
  return { rows, cols };
}
