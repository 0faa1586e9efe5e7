// The main sandbox and runCommand: output, exit codes as values, `check`, env and working directory.
import { CommandExitError, createSandbox } from "../../index.js";
import { assertEqual, assertOk, assertRejects, mainSandbox, type Check } from "../harness.js";

/** The sandbox's own environment, set at create; commands see it under their own. */
const SANDBOX_ENV = { SUITE_GREETING: "hello from the sandbox env", SUITE_OVERRIDDEN: "sandbox" };

export const createMainSandbox: Check = {
  name: "createSandbox with env and metadata",
  async run(context) {
    const sandbox = await createSandbox({
      ...context.connection,
      env: SANDBOX_ENV,
      metadata: { suite: context.runId, runtime: context.runtime },
      // A safety net: should this process die before its cleanup, the server still ends the VM.
      timeoutMs: 10 * 60_000,
    });
    context.sandbox = sandbox;
    context.cleanup.push(sandbox);
    assertOk(/\S/.test(sandbox.sandboxId), "the sandbox has an id");
    const info = await sandbox.info();
    assertEqual(info.sandboxId, sandbox.sandboxId, "info().sandboxId");
    assertEqual(info.state, "running", "state after create");
    assertEqual(info.metadata, { suite: context.runId, runtime: context.runtime }, "metadata as given");
    assertOk(info.timeoutAt !== null, "timeoutAt is set");
  },
};

export const commandChecks: Check[] = [
  {
    name: "runCommand: stdout, stderr, stdin, argv",
    async run(context) {
      const sandbox = mainSandbox(context);
      const shell = await sandbox.runCommand("echo out; echo err >&2");
      const { stdoutBytes, stderrBytes, ...fields } = shell;
      assertEqual(
        fields,
        { exitCode: 0, signal: null, timedOut: false, stdout: "out\n", stderr: "err\n", stdoutTruncated: false, stderrTruncated: false, stdoutTotalBytes: 4, stderrTotalBytes: 4 },
        "a shell command's result",
      );
      assertEqual([...stdoutBytes, ...stderrBytes], [...new TextEncoder().encode("out\nerr\n")], "the output as bytes too");
      // An argv runs without a shell: the space and the $ reach printf as they are.
      const argv = await sandbox.runCommand(["printf", "%s|", "a b", "$HOME"]);
      assertEqual(argv.stdout, "a b|$HOME|", "argv words, unquoted and unexpanded");
      assertEqual((await sandbox.runCommand(["cat"], { stdin: "piped in\n" })).stdout, "piped in\n", "stdin");
    },
  },
  {
    name: "runCommand: binary output is exact in stdoutBytes; output past maxOutputBytes is cut and counted",
    async run(context) {
      const sandbox = mainSandbox(context);
      const binary = await sandbox.runCommand(["printf", "\\0\\377\\376text"]);
      assertOk(binary.stdoutBytes instanceof Uint8Array, "stdoutBytes is a Uint8Array");
      assertEqual([...binary.stdoutBytes], [0, 255, 254, 116, 101, 120, 116], "the bytes as the guest wrote them");
      assertEqual(binary.stdout, "\0\uFFFD\uFFFDtext", "the text, with U+FFFD for what is not UTF-8");
      const text = await sandbox.runCommand(["printf", "h\u00e9llo \u2713"]);
      assertEqual([text.stdout, text.stdoutBytes.length], ["héllo ✓", 10], "UTF-8 text stays text");
      const cut = await sandbox.runCommand("head -c 300000 /dev/zero; echo done >&2", { maxOutputBytes: 1000 });
      assertEqual(
        [cut.exitCode, cut.stdoutTruncated, cut.stdoutTotalBytes, cut.stdoutBytes.length, cut.stderr, cut.stderrTruncated],
        [0, true, 300_000, 1000, "done\n", false],
        "a capped stream: the first 1000 bytes kept, all of them counted, the command ran to its end",
      );
    },
  },
  {
    name: "runCommand: a non-zero exit is a value; check: true throws CommandExitError",
    async run(context) {
      const sandbox = mainSandbox(context);
      const failed = await sandbox.runCommand("echo partial; echo why >&2; exit 3");
      assertEqual(failed.exitCode, 3, "exitCode");
      assertEqual(failed.stdout, "partial\n", "stdout of the failed command");
      const error = await assertRejects(sandbox.runCommand("echo why >&2; exit 3", { check: true }), CommandExitError, "check: true");
      assertEqual(error.result.exitCode, 3, "the error's result.exitCode");
      assertEqual(error.code, "command_exit", "code");
      assertOk(error.message.includes("exited with code 3") && error.message.includes("why"), `the message says how and why: ${error.message}`);
      assertEqual((await sandbox.runCommand("true", { check: true })).exitCode, 0, "check: true passes a 0 exit through");
    },
  },
  {
    name: "runCommand: the sandbox env under the command's env; cwd",
    async run(context) {
      const sandbox = mainSandbox(context);
      const env = await sandbox.runCommand('printf "%s|%s|%s" "$SUITE_GREETING" "$SUITE_OVERRIDDEN" "$SUITE_OWN"', {
        env: { SUITE_OVERRIDDEN: "command", SUITE_OWN: "own" },
      });
      assertEqual(env.stdout, `${SANDBOX_ENV.SUITE_GREETING}|command|own`, "sandbox env, overridden and added to by the command's");
      assertEqual((await sandbox.runCommand("pwd")).stdout, "/root\n", "the default working directory");
      assertEqual((await sandbox.runCommand("pwd", { cwd: "/tmp" })).stdout, "/tmp\n", "cwd");
    },
  },
];
