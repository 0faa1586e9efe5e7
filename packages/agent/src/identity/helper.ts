import { spawn, type ChildProcessByStdio } from "node:child_process";
import type { Readable, Writable } from "node:stream";
import { RequestError } from "../http/respond.js";

/** The helper does three syscalls per request; anything slower is stuck. */
const helperTimeoutMs = 10_000;
const maxAnswerLength = 4_096;

interface Pending {
  resolve: () => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * The static guest-identity helper (packages/agent/native/guest-identity.c), kept running in `--serve` mode: Node can
 * neither set the clock nor issue the random driver's ioctls. Started with the agent, so it is already running in
 * every restored clone and a refresh is one pipe round trip. Restarted if it dies. Failures are 500 internal errors
 * carrying the helper's message.
 */
export class IdentityHelper {
  #process: ChildProcessByStdio<Writable, Readable, Readable> | undefined;
  #pending: Pending[] = [];
  #answer = "";
  #stderr = "";

  constructor(readonly path: string) {
    this.#start();
  }

  /** Sets the guest clock to `epochMs` and reseeds the kernel CRNG with `entropy`. Requests run in order. */
  apply(epochMs: number, entropy: Buffer): Promise<void> {
    const child = this.#process ?? this.#start();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        this.#failAll(`no answer within ${helperTimeoutMs} ms`);
      }, helperTimeoutMs);
      this.#pending.push({ resolve, reject, timer });
      setReferenced(child, true);
      child.stdin.write(`${epochMs} ${entropy.toString("hex")}\n`);
    });
  }

  close(): void {
    this.#process?.kill("SIGKILL");
  }

  /** The running helper's pid (plumbing, not a user process). */
  get pid(): number | undefined {
    return this.#process?.pid;
  }

  #start(): ChildProcessByStdio<Writable, Readable, Readable> {
    const child = spawn(this.path, ["--serve"], { stdio: ["pipe", "pipe", "pipe"], env: {} });
    this.#process = child;
    this.#answer = "";
    this.#stderr = "";
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => this.#onAnswer(chunk));
    child.stderr.on("data", (chunk: Buffer) => {
      this.#stderr = (this.#stderr + chunk.toString("utf8")).slice(-maxAnswerLength);
    });
    // EPIPE when the helper died; its exit is what reports the failure.
    child.stdin.on("error", () => {});
    child.on("error", (error: NodeJS.ErrnoException) => {
      if (this.#process === child) this.#process = undefined;
      this.#failAll(error.code === "ENOENT" ? "not found" : error.message);
    });
    // "close", not "exit": by then stderr has been read to the end, so the message is complete.
    child.on("close", (exitCode, signal) => {
      if (this.#process === child) this.#process = undefined;
      const how = signal === null ? `exit code ${exitCode}` : `signal ${signal}`;
      this.#failAll(`exited (${how})${this.#stderr.trim() === "" ? "" : `: ${this.#stderr.trim()}`}`);
    });
    setReferenced(child, false);
    return child;
  }

  #onAnswer(chunk: string): void {
    this.#answer += chunk;
    if (this.#answer.length > maxAnswerLength && !this.#answer.includes("\n")) {
      this.#process?.kill("SIGKILL");
      return;
    }
    let newline: number;
    while ((newline = this.#answer.indexOf("\n")) >= 0) {
      const line = this.#answer.slice(0, newline);
      this.#answer = this.#answer.slice(newline + 1);
      const pending = this.#pending.shift();
      if (!pending) continue;
      clearTimeout(pending.timer);
      if (line === "ok") pending.resolve();
      else pending.reject(helperError(this.path, line.replace(/^error /, "")));
    }
    if (this.#pending.length === 0 && this.#process) setReferenced(this.#process, false);
  }

  #failAll(message: string): void {
    for (const pending of this.#pending.splice(0)) {
      clearTimeout(pending.timer);
      pending.reject(helperError(this.path, message));
    }
  }
}

/**
 * An idle helper must not keep the agent's process alive (it never exits by itself); one with a request in flight
 * must, or the answer is never read.
 */
function setReferenced(child: ChildProcessByStdio<Writable, Readable, Readable>, referenced: boolean): void {
  for (const handle of [child, child.stdout, child.stderr] as unknown as Array<{ ref?: () => void; unref?: () => void }>) {
    if (referenced) handle.ref?.();
    else handle.unref?.();
  }
}

function helperError(path: string, message: string): RequestError {
  return new RequestError(500, "internal", `identity helper ${path}: ${message}`);
}
