import { spawn, type ChildProcess, type ChildProcessByStdio } from "node:child_process";
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { constants as fsConstants, openSync, closeSync } from "node:fs";
import { Socket } from "node:net";
import { constants as osConstants } from "node:os";
import type { Readable, Writable } from "node:stream";
import type { TerminalSize } from "@codecourier/protocol";
import { logProblem } from "../log.js";

/** What a command's process is started with. */
export interface SpawnRequest {
  file: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
  uid?: number;
  gid?: number;
  /** A pipe for stdin; otherwise the process reads /dev/null (or, on a terminal, gets no input). */
  stdin: boolean;
  /** Runs the process on a new pseudo-terminal of this size; only where the spawner supportsTerminals. */
  terminal?: TerminalSize;
}

/** The pseudo-terminal a process runs on. */
export interface Terminal {
  /** Sets the window size (the foreground process group gets SIGWINCH). Rejects with a TerminalResizeError. */
  resize(size: TerminalSize): Promise<void>;
}

/** A started process: its leader pid (also its process group id: it runs in a session of its own) and its pipes. */
export interface SpawnedProcess {
  readonly pid: number;
  readonly stdin: Writable | null;
  /** On a terminal: everything the terminal shows (its echo of the input included). */
  readonly stdout: Readable;
  /** Null on a terminal, which has no separate stderr. */
  readonly stderr: Readable | null;
  readonly terminal: Terminal | null;
  /** Called once the process has exited and its stdout and stderr are closed (like ChildProcess 'close'). */
  onClose(listener: (exitCode: number | null, signal: NodeJS.Signals | null) => void): void;
}

/** A start that failed: nothing runs. `code` is the errno name (ENOENT, EACCES, …). */
export class SpawnError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = "SpawnError";
  }
}

/** A resize that did not happen. `code` is the errno name: ENOENT when the terminal has closed. */
export class TerminalResizeError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = "TerminalResizeError";
  }
}

/** Starts command processes. */
export interface Spawner {
  spawn(request: SpawnRequest): Promise<SpawnedProcess>;
  /** Whether spawn() can put a process on a pseudo-terminal (SpawnRequest.terminal). */
  readonly supportsTerminals: boolean;
  /** Pids of the spawner's own long-lived processes (guest plumbing, not commands). */
  readonly plumbingPids: number[];
  close(): void;
}

/** Node's own child_process: for an agent outside a guest (tests, development) where no helper is installed. */
export class NodeSpawner implements Spawner {
  readonly plumbingPids: number[] = [];
  /** Node cannot make a pty the controlling terminal of a child (no setsid + TIOCSCTTY between fork and exec). */
  readonly supportsTerminals = false;

  spawn(request: SpawnRequest): Promise<SpawnedProcess> {
    if (request.terminal !== undefined) {
      return Promise.reject(new SpawnError(`spawn ${request.file}: a pty needs the guest-spawner helper`, "ENOTSUP"));
    }
    return new Promise((resolve, reject) => {
      let child: ChildProcess;
      try {
        child = spawn(request.file, request.args, {
          cwd: request.cwd,
          env: request.env,
          uid: request.uid,
          gid: request.gid,
          detached: true,
          stdio: [request.stdin ? "pipe" : "ignore", "pipe", "pipe"],
        });
      } catch (error) {
        // Synchronous failures: EPERM switching user, E2BIG, invalid arguments.
        const code = (error as NodeJS.ErrnoException).code ?? "EINVAL";
        reject(new SpawnError(error instanceof Error ? error.message : String(error), code));
        return;
      }
      child.once("error", (error: NodeJS.ErrnoException) => {
        if (child.pid === undefined) reject(new SpawnError(error.message, error.code ?? "EINVAL"));
        else logProblem(`spawn ${request.file}: child process error`, error);
      });
      child.once("spawn", () =>
        resolve({
          pid: child.pid!,
          stdin: child.stdin,
          stdout: child.stdout!,
          stderr: child.stderr!,
          terminal: null,
          onClose: (listener) => child.once("close", listener),
        }),
      );
    });
  }

  close(): void {}
}

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));
const signalNames = new Map<number, NodeJS.Signals>(
  Object.entries(osConstants.signals).map(([name, value]) => [value, name as NodeJS.Signals]),
);
/** An answer line is at most a few numbers and an id; anything longer is a broken helper. */
const maxAnswerLength = 4_096;

const hex = (text: string) => Buffer.from(text, "utf8").toString("hex");

interface PendingSpawn {
  request: SpawnRequest;
  resolve: (process: SpawnedProcess) => void;
  reject: (error: Error) => void;
}

interface PendingResize {
  resolve: () => void;
  reject: (error: Error) => void;
}

/**
 * Starts commands through the static guest-spawner helper (packages/agent/native/guest-spawner.c), kept running
 * for the agent's whole life: forking the ~60 MB agent costs a command start 20-60 ms under TCG, forking the
 * helper about what a shell's fork costs. The command's stdio are pipes; the agent opens its ends through
 * /proc/<helper>/fd and then lets the helper close its copies. Restarted if it dies; the commands it had started
 * are then killed, since nobody could report their exit any more. A terminal's master stays in the helper, which
 * relays it to pipes (a pty master cannot be taken over through /proc) and resizes it on request.
 */
export class HelperSpawner implements Spawner {
  readonly supportsTerminals = true;
  #helper: ChildProcessByStdio<Writable, Readable, null> | undefined;
  readonly #pending = new Map<string, PendingSpawn>();
  readonly #pendingResizes = new Map<string, PendingResize>();
  readonly #running = new Map<number, HelperProcess>();
  #answer = "";

  constructor(readonly path: string) {
    this.#start();
  }

  get plumbingPids(): number[] {
    return this.#helper?.pid === undefined ? [] : [this.#helper.pid];
  }

  spawn(request: SpawnRequest): Promise<SpawnedProcess> {
    // No C string can hold a NUL byte; the helper would refuse the request.
    if ([request.file, ...request.args, request.cwd, ...Object.entries(request.env).flat()].some((s) => s.includes("\0"))) {
      return Promise.reject(new SpawnError(`spawn ${request.file}: arguments must not contain NUL bytes`, "EINVAL"));
    }
    const helper = this.#helper ?? this.#start();
    const id = randomBytes(16).toString("hex");
    const env = Object.entries(request.env).map(([name, value]) => hex(`${name}=${value}`));
    const { terminal } = request;
    const fields = [
      terminal === undefined ? "spawn" : "spawn-pty",
      id,
      request.stdin ? "1" : "0",
      ...(terminal === undefined ? [] : [String(terminal.rows), String(terminal.cols)]),
      request.uid === undefined ? "-" : String(request.uid),
      request.gid === undefined ? "-" : String(request.gid),
      hex(request.cwd),
      String(1 + request.args.length),
      hex(request.file),
      ...request.args.map(hex),
      String(env.length),
      ...env,
    ];
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { request, resolve, reject });
      setReferenced(helper, true);
      helper.stdin.write(`${fields.join(" ")}\n`);
    });
  }

  close(): void {
    this.#helper?.kill("SIGKILL");
  }

  #resize(terminalId: string, size: TerminalSize): Promise<void> {
    const helper = this.#helper;
    if (helper === undefined) return Promise.reject(new TerminalResizeError("the terminal has closed (the spawner restarted)", "ENOENT"));
    const requestId = randomBytes(16).toString("hex");
    return new Promise((resolve, reject) => {
      this.#pendingResizes.set(requestId, { resolve, reject });
      setReferenced(helper, true);
      helper.stdin.write(`resize ${requestId} ${terminalId} ${size.rows} ${size.cols}\n`);
    });
  }

  #start(): ChildProcessByStdio<Writable, Readable, null> {
    const helper = spawn(this.path, ["--serve"], { stdio: ["pipe", "pipe", "inherit"], env: {} });
    this.#helper = helper;
    this.#answer = "";
    helper.stdout.setEncoding("utf8");
    helper.stdout.on("data", (chunk: string) => this.#onAnswer(helper, chunk));
    helper.stdin.on("error", () => {});
    helper.on("error", (error: NodeJS.ErrnoException) => this.#onHelperGone(helper, error.code === "ENOENT" ? "not found" : error.message));
    helper.on("close", (exitCode, signal) => this.#onHelperGone(helper, `exited (${signal ?? `exit code ${exitCode}`})`));
    setReferenced(helper, false);
    return helper;
  }

  #onAnswer(helper: ChildProcessByStdio<Writable, Readable, null>, chunk: string): void {
    this.#answer += chunk;
    let newline: number;
    while ((newline = this.#answer.indexOf("\n")) >= 0) {
      const line = this.#answer.slice(0, newline);
      this.#answer = this.#answer.slice(newline + 1);
      this.#handleLine(helper, line.split(" "));
    }
    if (this.#answer.length > maxAnswerLength) helper.kill("SIGKILL");
    if (this.#pending.size === 0 && this.#running.size === 0 && this.#pendingResizes.size === 0) setReferenced(helper, false);
  }

  #handleLine(helper: ChildProcessByStdio<Writable, Readable, null>, fields: string[]): void {
    const [kind, first = "", second = "", third = "", fourth = "", fifth = ""] = fields;
    if (kind === "exit") {
      const code = Number(second);
      const signal = signalNames.get(Number(third)) ?? null;
      const running = this.#running.get(Number(first));
      this.#running.delete(Number(first));
      running?.exited(code >= 0 ? code : null, code >= 0 ? null : (signal ?? "SIGKILL"));
      return;
    }
    const resize = this.#pendingResizes.get(first);
    if (resize !== undefined) {
      this.#pendingResizes.delete(first);
      if (kind === "resized") resize.resolve();
      else {
        const code = errnoNames.get(Number(second)) ?? "EINVAL";
        resize.reject(new TerminalResizeError(code === "ENOENT" ? "the terminal has closed" : `resize failed: ${code}`, code));
      }
      return;
    }
    const pending = this.#pending.get(first);
    if (pending === undefined) {
      if (kind === "failed") logProblem(`spawner: refused a request (errno ${second}, ${third})`, undefined);
      return;
    }
    this.#pending.delete(first);
    const { request } = pending;
    if (kind === "failed") {
      const code = errnoNames.get(Number(second)) ?? "EINVAL";
      pending.reject(new SpawnError(third === "chdir" ? `spawn ${request.file} ${code} (working directory ${request.cwd})` : `spawn ${request.file} ${code}`, code));
      return;
    }
    // spawned <id> <pid> <stdin-fd> <stdout-fd> <stderr-fd>; -1: no such pipe (no stdin, or stderr on a terminal)
    const pid = Number(second);
    let fds: number[] = [];
    try {
      // Node opens files close-on-exec, so no command inherits these.
      const at = (fd: string, flags: number) => openSync(`/proc/${helper.pid}/fd/${fd}`, flags | fsConstants.O_NONBLOCK);
      fds = [third === "-1" ? -1 : at(third, fsConstants.O_WRONLY)];
      fds.push(at(fourth, fsConstants.O_RDONLY));
      fds.push(fifth === "-1" ? -1 : at(fifth, fsConstants.O_RDONLY));
    } catch (error) {
      for (const fd of fds) if (fd >= 0) closeSync(fd);
      helper.stdin.write(`release ${first}\n`);
      try {
        process.kill(-pid, "SIGKILL");
      } catch {
        // Already gone.
      }
      pending.reject(new SpawnError(`spawn ${request.file}: taking over its pipes failed: ${String(error)}`, "EIO"));
      return;
    }
    helper.stdin.write(`release ${first}\n`);
    const terminal: Terminal | null = request.terminal === undefined ? null : { resize: (size) => this.#resize(first, size) };
    const started = new HelperProcess(pid, fds[0]!, fds[1]!, fds[2]!, terminal);
    this.#running.set(pid, started);
    pending.resolve(started);
  }

  #onHelperGone(helper: ChildProcessByStdio<Writable, Readable, null>, reason: string): void {
    if (this.#helper !== helper) return;
    this.#helper = undefined;
    logProblem(`spawner ${this.path}: ${reason}`, undefined);
    for (const pending of this.#pending.values()) pending.reject(new SpawnError(`spawner ${this.path}: ${reason}`, "EIO"));
    this.#pending.clear();
    // The terminals were the helper's: they are gone with it.
    for (const resize of this.#pendingResizes.values()) resize.reject(new TerminalResizeError(`spawner ${this.path}: ${reason}`, "ENOENT"));
    this.#pendingResizes.clear();
    // Their exits can no longer be reported: end them rather than leave commands that never finish.
    for (const [pid, running] of this.#running) {
      try {
        process.kill(-pid, "SIGKILL");
      } catch {
        // Already gone.
      }
      running.exited(null, "SIGKILL");
    }
    this.#running.clear();
  }
}

/** A process started by the helper: the pipes are ours, the exit comes from the helper's answer line. */
class HelperProcess extends EventEmitter implements SpawnedProcess {
  readonly stdin: Socket | null;
  readonly stdout: Socket;
  readonly stderr: Socket | null;
  #exit: { exitCode: number | null; signal: NodeJS.Signals | null } | undefined;
  #openOutputs: number;

  constructor(
    readonly pid: number,
    stdinFd: number,
    stdoutFd: number,
    stderrFd: number,
    readonly terminal: Terminal | null,
  ) {
    super();
    this.stdin = stdinFd < 0 ? null : new Socket({ fd: stdinFd, readable: false, writable: true });
    this.stdout = new Socket({ fd: stdoutFd, readable: true, writable: false });
    this.stderr = stderrFd < 0 ? null : new Socket({ fd: stderrFd, readable: true, writable: false });
    const outputs = this.stderr === null ? [this.stdout] : [this.stdout, this.stderr];
    this.#openOutputs = outputs.length;
    for (const output of outputs) {
      output.once("close", () => {
        this.#openOutputs--;
        this.#maybeClosed();
      });
    }
  }

  onClose(listener: (exitCode: number | null, signal: NodeJS.Signals | null) => void): void {
    this.once("close", listener);
  }

  exited(exitCode: number | null, signal: NodeJS.Signals | null): void {
    this.#exit = { exitCode, signal };
    this.#maybeClosed();
  }

  #maybeClosed(): void {
    if (this.#exit === undefined || this.#openOutputs > 0) return;
    this.stdin?.destroy();
    this.emit("close", this.#exit.exitCode, this.#exit.signal);
  }
}

/** An idle helper must not keep the agent's process alive; one with a spawn or a command in flight must. */
function setReferenced(child: ChildProcessByStdio<Writable, Readable, null>, referenced: boolean): void {
  for (const handle of [child, child.stdout] as unknown as Array<{ ref?: () => void; unref?: () => void }>) {
    if (referenced) handle.ref?.();
    else handle.unref?.();
  }
}
