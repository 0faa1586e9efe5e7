import { randomUUID } from "node:crypto";
import { stat } from "node:fs/promises";
import type { IncomingHttpHeaders, ServerHttp2Stream } from "node:http2";
import type { Readable, Writable } from "node:stream";
import { EXEC_SPEC_HEADER, OutputKind, type ExecExit, type ExecSpec, type TerminalSize } from "@codecourier/protocol";
import { RequestError, badRequest } from "../http/respond.js";
import { logProblem } from "../log.js";
import { Attachment, respondWithRecords } from "./attachment.js";
import { signalProcessGroup } from "./process-group.js";
import type { CommandRegistry, RegisteredCommand } from "./registry.js";
import { parseExecSpecHeader } from "./spec.js";
import { SpawnError, TerminalResizeError, type SpawnedProcess, type Spawner } from "./spawner.js";
import { UnknownUserError, resolveUser } from "./user.js";

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** What a command on a pty sees as TERM unless its env says otherwise: what today's terminal emulators speak. */
const defaultTerminalType = "xterm-256color";
/**
 * After a timeout kill, how long to keep reading output. A process that escaped the group (setsid) may hold the
 * pipes open forever; past this grace the pipes are closed so that the exit record still goes out.
 */
const pipeGraceAfterKillMs = 2_000;
/** Exit codes shells use for "command not found" and "found but cannot be executed". */
const exitNotFound = 127;
const exitCannotExecute = 126;
const maxSpawnErrorLength = 4_096;

/** POST /v1/exec: validates the spec, answers 200 with the command id at once, then streams records. */
export function handleExec(
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  registry: CommandRegistry<Command>,
  spawner: Spawner,
): void {
  const spec = parseExecSpecHeader(headers[EXEC_SPEC_HEADER]);
  if (spec.pty !== undefined && !spawner.supportsTerminals) {
    throw badRequest("pty needs the guest-spawner helper; this agent starts commands with Node's spawn");
  }
  if (registry.isFull) {
    throw new RequestError(429, "too_many_commands", `at most ${registry.capacity} commands may run at once`);
  }
  const command = new Command(spec, stream, registry, spawner);
  respondWithRecords(stream, command.id);
  command.attach(stream);
  registry.add(command);
  command.start().catch((error: unknown) => {
    logProblem(`exec ${command.id} failed`, error);
    command.finishWithSpawnError(exitCannotExecute, `internal error: ${String(error)}`);
  });
}

/**
 * One running command. Its stdin comes from the exec stream that started it; its output goes to its current
 * attachment: that same stream or, for a background command, the stream of its latest attach (or nowhere).
 */
export class Command implements RegisteredCommand {
  readonly id = randomUUID();
  readonly startedAtMs = Date.now();
  readonly background: boolean;
  #child: SpawnedProcess | undefined;
  #timer: NodeJS.Timeout | undefined;
  #timedOut = false;
  #finished = false;
  /** A foreground command's host went away before the exit record: nobody will read the output any more. */
  #cancelled = false;
  #attachment: Attachment | undefined;
  /** The attachment whose full buffer made us stop reading the child's pipes, if any. */
  #outputPausedFor: Attachment | undefined;
  /** Signals that arrived while the user was still being resolved, delivered right after spawn. */
  readonly #earlySignals: NodeJS.Signals[] = [];
  /** The latest terminal size asked for before the process existed, applied right after spawn. */
  #earlyTerminalSize: TerminalSize | undefined;

  constructor(
    private readonly spec: ExecSpec,
    /** The stream that started the command: its request body is the command's stdin. */
    private readonly execStream: ServerHttp2Stream,
    private readonly registry: CommandRegistry<Command>,
    private readonly spawner: Spawner,
  ) {
    this.background = spec.background === true;
  }

  /**
   * Sends the output from now on to `stream`, whose response headers must be out. A previous attachment ends
   * with a detached record: the newest attachment wins, so a host that lost track of an old one is never locked
   * out by it.
   */
  attach(stream: ServerHttp2Stream): void {
    const previous = this.#attachment;
    const attachment = new Attachment(stream);
    this.#attachment = attachment;
    stream.on("close", () => this.#onAttachmentClosed(attachment));
    previous?.detach();
    // Waiting for the previous attachment's buffer to drain would stall the new one for nothing.
    this.#resumeOutput();
  }

  async start(): Promise<void> {
    const { spec, execStream } = this;
    const wantsStdin = spec.stdin !== false;
    if (!wantsStdin) execStream.resume(); // discard any body so flow control never stalls the host

    let identity: { uid?: number; gid?: number; home: string; name?: string };
    try {
      identity = spec.user === undefined ? currentIdentity() : await resolveUser(spec.user);
    } catch (error) {
      if (!(error instanceof UnknownUserError)) throw error;
      this.finishWithSpawnError(exitCannotExecute, error.message);
      return;
    }
    if (this.#cancelled) {
      this.#finishQuietly();
      return;
    }

    const argv = spec.argv ?? ["/bin/sh", "-c", spec.shell ?? ""];
    const [file = "", ...args] = argv;
    const env: Record<string, string> = { PATH: defaultPath, HOME: identity.home };
    if (spec.pty !== undefined) env.TERM = defaultTerminalType;
    if (identity.name !== undefined) Object.assign(env, { USER: identity.name, LOGNAME: identity.name });
    Object.assign(env, spec.env);

    let child: SpawnedProcess;
    try {
      child = await this.spawner.spawn({
        file,
        args,
        cwd: spec.cwd ?? "/",
        env,
        uid: identity.uid,
        gid: identity.gid,
        stdin: wantsStdin,
        terminal: spec.pty,
      });
    } catch (error) {
      if (!(error instanceof SpawnError)) throw error;
      const message = await this.#explainSpawnFailure(error);
      this.finishWithSpawnError(error.code === "ENOENT" ? exitNotFound : exitCannotExecute, message);
      return;
    }
    this.#child = child;
    if (this.#cancelled) {
      // The host left while the process was being started.
      this.#killGroup();
      this.#closePipes();
    }
    child.onClose((exitCode, signal) => {
      this.#finish({ exitCode: signal === null ? exitCode : null, signal, timedOut: this.#timedOut });
    });
    this.#forwardOutput(child.stdout, OutputKind.stdout);
    this.#forwardOutput(child.stderr, OutputKind.stderr);
    if (child.stdin) this.#feedStdin(child.stdin);

    if (spec.timeoutMs !== undefined) {
      this.#timer = setTimeout(() => this.#onTimeout(), spec.timeoutMs);
    }
    for (const signal of this.#earlySignals.splice(0)) this.signal(signal);
    if (this.#earlyTerminalSize !== undefined) {
      this.resize(this.#earlyTerminalSize).catch((error: unknown) => logProblem(`exec ${this.id}: resize failed`, error));
      this.#earlyTerminalSize = undefined;
    }
  }

  /** Signals the whole process group. */
  signal(signal: NodeJS.Signals): void {
    const pid = this.#child?.pid;
    if (pid === undefined) {
      if (!this.#finished) this.#earlySignals.push(signal);
      return;
    }
    signalProcessGroup(pid, signal);
  }

  /** Sets the window size of the command's terminal; a RequestError if it has none or it has closed. */
  async resize(size: TerminalSize): Promise<void> {
    if (this.spec.pty === undefined) throw badRequest(`command ${this.id} was not started with a pty`);
    const terminal = this.#child?.terminal;
    if (terminal === undefined || terminal === null) {
      // Not spawned yet: the size the host wants last is the one to apply.
      if (!this.#finished) this.#earlyTerminalSize = size;
      return;
    }
    try {
      await terminal.resize(size);
    } catch (error) {
      if (error instanceof TerminalResizeError && error.code === "ENOENT") {
        throw new RequestError(404, "not_found", `the terminal of command ${this.id} has closed`);
      }
      throw error;
    }
  }

  #onAttachmentClosed(attachment: Attachment): void {
    if (this.#attachment !== attachment) return; // already replaced, or the command finished
    this.#attachment = undefined;
    // Nobody to wait for any more: read on (and discard) so a background command never blocks on a full pipe.
    this.#resumeOutput();
    // Closed before the exit record went out = the host reset the stream or the session died.
    if (!this.#finished && !this.background) this.#cancel();
  }

  #forwardOutput(output: Readable | null, kind: typeof OutputKind.stdout | typeof OutputKind.stderr): void {
    if (output === null) return;
    output.on("data", (chunk: Buffer) => {
      const attachment = this.#attachment;
      // Unattached (a background command between hosts): the output is dropped, but the pipe keeps flowing.
      if (attachment === undefined || this.#cancelled || !attachment.isOpen) return;
      if (!attachment.writeOutput(kind, chunk)) this.#pauseOutputUntilWritable(attachment);
    });
    output.on("error", (error) => logProblem(`exec ${this.id}: output pipe error`, error));
  }

  /** Backpressure: the host is not reading, so stop reading both pipes; the child then blocks on write. */
  #pauseOutputUntilWritable(attachment: Attachment): void {
    if (this.#outputPausedFor !== undefined) return;
    this.#outputPausedFor = attachment;
    this.#child?.stdout?.pause();
    this.#child?.stderr?.pause();
    attachment.whenWritable(() => {
      if (this.#outputPausedFor === attachment) this.#resumeOutput();
    });
  }

  #resumeOutput(): void {
    if (this.#outputPausedFor === undefined) return;
    this.#outputPausedFor = undefined;
    this.#child?.stdout?.resume();
    this.#child?.stderr?.resume();
  }

  #feedStdin(stdin: Writable): void {
    const { execStream } = this;
    // A reset stream's unread body is gone; a background command must not wait for it forever.
    if (execStream.destroyed) {
      stdin.end();
      return;
    }
    // pipe() pauses the request body while stdin is full and ends stdin when the body ends.
    execStream.pipe(stdin);
    const discardRest = () => {
      // The child closed stdin (or exited): drop whatever the host still sends instead of stalling its window.
      execStream.unpipe(stdin);
      execStream.resume();
    };
    stdin.on("error", discardRest); // EPIPE when the child exits without reading everything
    stdin.on("close", discardRest);
    // The stream went away without ending its body: a background command, still running, sees EOF.
    execStream.once("close", () => {
      if (!stdin.destroyed) stdin.end();
    });
  }

  #onTimeout(): void {
    this.#timedOut = true;
    this.#killGroup();
    setTimeout(() => this.#closePipes(), pipeGraceAfterKillMs).unref();
  }

  #cancel(): void {
    this.#cancelled = true;
    if (this.#child?.pid === undefined) return; // start() cancels once the child exists
    this.#killGroup();
    // Nobody reads the output any more; closing the pipes lets 'close' fire as soon as the leader is gone.
    this.#closePipes();
  }

  #killGroup(): void {
    const pid = this.#child?.pid;
    if (pid === undefined) return;
    try {
      signalProcessGroup(pid, "SIGKILL");
    } catch (error) {
      logProblem(`exec ${this.id}: kill failed`, error);
    }
  }

  #closePipes(): void {
    this.#child?.stdout?.destroy();
    this.#child?.stderr?.destroy();
    this.#child?.stdin?.destroy();
  }

  finishWithSpawnError(exitCode: number, message: string): void {
    const spawnError = message.length > maxSpawnErrorLength ? message.slice(0, maxSpawnErrorLength) : message;
    this.#finish({ exitCode, signal: null, timedOut: false, spawnError });
  }

  async #explainSpawnFailure(error: SpawnError): Promise<string> {
    // A missing cwd also surfaces as "spawn <file> ENOENT", which would blame the wrong thing.
    if (error.code === "ENOENT" && this.spec.cwd !== undefined) {
      const cwdMissing = await stat(this.spec.cwd).then(
        (info) => !info.isDirectory(),
        () => true,
      );
      if (cwdMissing) return `working directory does not exist: ${this.spec.cwd}`;
    }
    return error.message;
  }

  #finish(exit: ExecExit): void {
    if (this.#finished) return;
    this.#markFinished(exit);
    const attachment = this.#attachment;
    this.#attachment = undefined;
    if (!this.#cancelled) attachment?.end(exit);
  }

  /** A foreground command whose host left before it could be spawned: nobody is told, nothing is kept. */
  #finishQuietly(): void {
    this.#markFinished(undefined);
  }

  #markFinished(exit: ExecExit | undefined): void {
    this.#finished = true;
    clearTimeout(this.#timer);
    this.registry.finish(this, exit);
  }
}

function currentIdentity(): { home: string; name?: string } {
  const isRoot = process.getuid?.() === 0;
  return {
    home: isRoot ? "/root" : (process.env.HOME ?? "/"),
    name: isRoot ? "root" : process.env.USER,
  };
}
