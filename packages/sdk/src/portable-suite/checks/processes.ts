// Processes: streamed output, a background process with stdin, reconnect by pid, a terminal.
import { PtyProcess } from "../../index.js";
import { assertEqual, assertOk, mainSandbox, type Check } from "../harness.js";

/** Reads a process's stdout until `pattern` shows up; fails if it exits first. */
async function readUntil(stdout: AsyncIterable<string>, pattern: RegExp): Promise<string> {
  let seen = "";
  for await (const text of stdout) {
    seen += text;
    if (pattern.test(seen)) return seen;
  }
  throw new Error(`the output ended without ${pattern}: ${JSON.stringify(seen)}`);
}

export const processChecks: Check[] = [
  {
    name: "runCommand with onStdout/onStderr streams output as it comes",
    async run(context) {
      const sandbox = mainSandbox(context);
      const pieces: string[] = [];
      const result = await sandbox.runCommand("echo a; sleep 0.3; echo b; echo c >&2", {
        onStdout: (text) => pieces.push(text),
        onStderr: (text) => pieces.push(`!${text}`),
      });
      assertEqual(result.stdout, "a\nb\n", "the whole stdout in the result");
      assertEqual(pieces.filter((p) => !p.startsWith("!")).join(""), "a\nb\n", "stdout pieces, in order");
      assertOk(pieces.includes("!c\n"), "stderr piece");
    },
  },
  {
    name: "background process: sendStdin, stdout iterable, reconnect by pid, wait",
    async run(context) {
      const sandbox = mainSandbox(context);
      const process = await sandbox.runCommand(["sh", "-c", "while read -r l; do echo got:$l; done"], { background: true, keepStdinOpen: true });
      await process.sendStdin("one\n");
      await readUntil(process.stdout, /got:one/);
      const again = await sandbox.processes.connect(process.pid);
      await again.closeStdin();
      const result = await again.wait();
      assertEqual([result.exitCode, result.stdout], [0, "got:one\n"], "exit and output seen from a reconnected handle");
    },
  },
  {
    name: "pty: a shell on a terminal, resized",
    async run(context) {
      const shell = await mainSandbox(context).pty.create({ rows: 20, cols: 70, cmd: "sh" });
      assertOk(shell instanceof PtyProcess, "a PtyProcess");
      await shell.resize({ rows: 33, cols: 99 });
      await shell.sendInput("stty size; exit 5\n");
      const result = await shell.wait();
      assertOk(/33 99/.test(result.stdout), `stty size after the resize: ${JSON.stringify(result.stdout)}`);
      assertEqual(result.exitCode, 5, "the shell's exit code");
    },
  },
];
