import { spawn } from "node:child_process";

export class ToolError extends Error {
  constructor(
    readonly tool: string,
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(`${tool} failed (exit ${exitCode ?? "signal"}): ${stderr.trim().split("\n").slice(-5).join("\n")}`);
    this.name = "ToolError";
  }
}

/** Runs a host tool to completion, collecting stdout; stderr is kept (bounded) for the error message. */
export function runTool(
  command: string,
  args: readonly string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; input?: Buffer | string } = {},
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    });
    // First, before anything else can throw: a spawn that fails (ENOENT; EMFILE when the process is out of
    // descriptors) is reported as an 'error' event, and an 'error' without a listener would end the server.
    child.on("error", (e) => reject(new ToolError(command, null, e.message)));
    // After a failed spawn Node gives the child no pipes at all; the 'error' above rejects.
    if (!child.stdout || !child.stderr) return;
    const out: Buffer[] = [];
    let err = "";
    child.stdout.on("data", (chunk: Buffer) => out.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => {
      err = (err + chunk.toString()).slice(-8192);
    });
    child.on("close", (code) => {
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new ToolError(command, code, err));
    });
    if (options.input !== undefined) {
      // A tool may stop reading before the end of its input (xz --single-stream ignores trailing bytes):
      // EPIPE on stdin is then expected, and the exit code says whether it succeeded.
      child.stdin?.on("error", () => {});
      child.stdin?.end(options.input);
    }
  });
}
