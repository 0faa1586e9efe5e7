import { API_LIMITS, type ApiProcessEvent, type ApiProcessInfo } from "@codecourier/protocol/api";
import type { ExecExit } from "@codecourier/protocol";
import { PassThrough, Readable } from "node:stream";
import type { AgentClient, CommandHandle } from "../agent-client/index.js";
import type { KeptOutput, OutputBudget } from "./output-budget.js";

/** One chunk of a process's output, numbered in the order the guest produced it. */
interface OutputChunk {
  seq: number;
  type: "stdout" | "stderr";
  data: Buffer;
  /** What it counts against the process's window and its tenant's budget: its bytes and its bookkeeping. */
  charge: number;
  kept: KeptOutput;
}

/**
 * What keeping a chunk costs beyond its bytes (the chunk's object, its Buffer, the budget's entry), so that a guest
 * writing one byte at a time cannot make the server hold millions of tiny chunks inside a "4 MiB" window.
 */
export const KEPT_CHUNK_OVERHEAD_BYTES = 256;

const ignore = () => {};

/** What a command that could not be started (no such program, bad cwd, unknown user) shows on its stderr. */
export function spawnErrorLine(spawnError: string): string {
  return `codecourier: cannot start the command: ${spawnError}\n`;
}

/**
 * A command that runs on after the request that started it (a background process, a pty, a streamed command).
 *
 * The server reads its output all the time, whether anyone listens or not — a process never stalls on a full pipe
 * because nobody is streaming — and keeps the most recent {@link API_LIMITS.maxProcessOutputBytes} in memory, so a
 * stream opened late (a reconnect, `codecourier logs`) replays what came before. What it keeps also counts against
 * its tenant's {@link OutputBudget}, shared by all the tenant's processes and commands: when that is full, the
 * tenant's oldest kept output goes first, whichever process it belongs to. Each stream reads the kept chunks at its
 * own pace ({@link OutputFeed}); one that falls behind what is kept skips ahead with a `truncated` event instead of
 * making the server hold more.
 *
 * The agent keeps a background command running when the host's session ends (pause, resume, restore), so after one
 * the process is re-attached lazily, on the next request that needs it. Its stdin does not survive that: the
 * agent ends a background command's stdin with the stream that started it.
 */
export class ServerProcess {
  /** Kept chunks, oldest first, in sequence order (with gaps where chunks were dropped or never kept). */
  #chunks: OutputChunk[] = [];
  #keptBytes = 0;
  /** Bytes of each stream received, kept or not. */
  readonly #receivedBytes = { stdout: 0, stderr: 0 };
  #nextSeq = 0;
  #exit: ExecExit | undefined;
  #attached: CommandHandle | undefined;
  #stdin: PassThrough | undefined;
  readonly #waiters = new Set<() => void>();

  constructor(
    readonly pid: string,
    readonly command: string | null,
    readonly pty: boolean,
    readonly startedAt: Date,
    private readonly budget: OutputBudget,
  ) {}

  get running(): boolean {
    return this.#exit === undefined;
  }

  get exit(): ExecExit | undefined {
    return this.#exit;
  }

  /** Whether output is being read from the guest right now (false after the session that carried it ended). */
  get attached(): boolean {
    return this.#attached !== undefined;
  }

  info(): ApiProcessInfo {
    return processInfo({ pid: this.pid, command: this.command, pty: this.pty, startedAt: this.startedAt, running: this.running, exit: this.#exit });
  }

  /** Starts reading a command's output (and takes its stdin, if it is still open). */
  follow(handle: CommandHandle, stdin?: PassThrough): void {
    this.#attached = handle;
    this.#stdin = stdin;
    const take = (type: "stdout" | "stderr") => (data: Buffer) => this.#append(type, data);
    handle.stdout.on("data", take("stdout"));
    handle.stderr.on("data", take("stderr"));
    handle.wait().then(
      (exit) => this.#finish(exit),
      // The session ended (pause, restore, host reconnect) or another attach took over: the command may run on.
      () => this.#detach(handle),
    );
  }

  /** Writes to the process's stdin; false when it is not open (never kept open, closed, or lost with a session). */
  writeStdin(data: Buffer): boolean {
    if (this.#stdin === undefined || this.#stdin.writableEnded) return false;
    this.#stdin.write(data);
    return true;
  }

  /** Ends the process's stdin (EOF); false when it was not open. */
  closeStdin(): boolean {
    if (this.#stdin === undefined || this.#stdin.writableEnded) return false;
    this.#stdin.end();
    return true;
  }

  /** Bytes of stdout and stderr received so far, kept or not. */
  get receivedBytes(): { stdout: number; stderr: number } {
    return { ...this.#receivedBytes };
  }

  /** The sequence number the next chunk will get: every chunk so far is numbered below it. */
  get nextSeq(): number {
    return this.#nextSeq;
  }

  /** The first kept chunk numbered `seq` or later; undefined when there is none (yet). */
  chunkFrom(seq: number): OutputChunk | undefined {
    const chunks = this.#chunks;
    let low = 0;
    let high = chunks.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (chunks[middle]!.seq < seq) low = middle + 1;
      else high = middle;
    }
    return chunks[low];
  }

  /** Drops all kept output and gives its bytes back to the budget (the process is being forgotten). */
  discardOutput(): void {
    for (const chunk of this.#chunks) chunk.kept.release();
    this.#chunks = [];
    this.#keptBytes = 0;
    this.#wake();
  }

  /** Calls `wake` once, at the next output or exit. */
  onNext(wake: () => void): () => void {
    this.#waiters.add(wake);
    return () => this.#waiters.delete(wake);
  }

  /** A stream of this process's output as NDJSON lines, from `fromSeq`; see {@link OutputFeed}. */
  feed(fromSeq: number, follow: boolean): Readable {
    return new OutputFeed(this, fromSeq, follow);
  }

  #append(type: "stdout" | "stderr", data: Buffer): void {
    if (data.length === 0) return;
    this.#receivedBytes[type] += data.length;
    // Numbered even when it is not kept: a reader then sees the gap as a `truncated` event.
    const seq = this.#nextSeq++;
    const charge = data.length + KEPT_CHUNK_OVERHEAD_BYTES;
    while (this.#chunks.length > 0 && this.#keptBytes + charge > API_LIMITS.maxProcessOutputBytes) {
      const oldest = this.#chunks.shift()!;
      this.#keptBytes -= oldest.charge;
      oldest.kept.release();
    }
    let chunk: OutputChunk | undefined;
    const kept = this.budget.keep(charge, () => this.#evicted(chunk));
    if (kept !== undefined) {
      chunk = { seq, type, data, charge, kept };
      this.#chunks.push(chunk);
      this.#keptBytes += charge;
    }
    this.#wake();
  }

  /** The budget dropped one of this process's chunks for room (it evicts oldest first, so normally the first here). */
  #evicted(chunk: OutputChunk | undefined): void {
    const index = chunk === undefined ? -1 : this.#chunks.indexOf(chunk);
    if (index === -1) return;
    this.#chunks.splice(index, 1);
    this.#keptBytes -= chunk!.charge;
  }

  #finish(exit: ExecExit): void {
    // A command that could not start says why where a shell would: on its stderr.
    if (exit.spawnError !== undefined) this.#append("stderr", Buffer.from(spawnErrorLine(exit.spawnError)));
    this.#exit = exit;
    this.#attached = undefined;
    this.#stdin?.destroy();
    this.#stdin = undefined;
    this.#wake();
  }

  #detach(handle: CommandHandle): void {
    if (this.#attached !== handle) return;
    this.#attached = undefined;
    this.#stdin?.destroy();
    this.#stdin = undefined;
    this.#wake();
  }

  #wake(): void {
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const wake of waiters) wake();
  }
}

/** The API's view of a process, from what the server or the agent knows of it. */
export function processInfo(known: {
  pid: string;
  command: string | null;
  pty: boolean;
  startedAt: Date;
  running: boolean;
  exit: ExecExit | undefined;
}): ApiProcessInfo {
  return {
    pid: known.pid,
    command: known.command,
    running: known.running,
    exitCode: known.exit?.exitCode ?? null,
    signal: known.exit?.signal ?? null,
    timedOut: known.exit?.timedOut ?? false,
    pty: known.pty,
    startedAt: known.startedAt.toISOString(),
  };
}

/**
 * One reader of a process's output: pulls kept chunks at the pace its consumer reads (Readable backpressure), so a
 * slow consumer costs the server nothing beyond the kept window. Ends after the exit event — or, when not
 * following, once it has caught up with the output so far.
 */
class OutputFeed extends Readable {
  #cursor: number;
  #unsubscribe: () => void = ignore;

  constructor(
    private readonly process: ServerProcess,
    fromSeq: number,
    private readonly follow: boolean,
  ) {
    super({ highWaterMark: 256 * 1024 });
    this.#cursor = fromSeq;
  }

  override _read(): void {
    this.#unsubscribe();
    for (;;) {
      const chunk = this.process.chunkFrom(this.#cursor);
      if (chunk !== undefined) {
        if (chunk.seq > this.#cursor) this.#send({ type: "truncated", seq: chunk.seq });
        this.#cursor = chunk.seq + 1;
        if (!this.#send({ type: chunk.type, seq: chunk.seq, data: chunk.data.toString("base64") })) return;
        continue;
      }
      // Output after the cursor that is not kept (dropped for the tenant's budget): say so, then go on.
      const nextSeq = this.process.nextSeq;
      if (this.#cursor < nextSeq) {
        this.#cursor = nextSeq;
        if (!this.#send({ type: "truncated", seq: nextSeq })) return;
        continue;
      }
      const exit = this.process.exit;
      if (exit !== undefined) {
        const received = this.process.receivedBytes;
        this.#send({
          type: "exit",
          exitCode: exit.exitCode,
          signal: exit.signal,
          timedOut: exit.timedOut,
          stdoutBytes: received.stdout,
          stderrBytes: received.stderr,
        });
        this.push(null);
        return;
      }
      if (!this.follow) {
        this.#send({ type: "ended" });
        this.push(null);
        return;
      }
      this.#unsubscribe = this.process.onNext(() => this._read());
      return;
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#unsubscribe();
    callback(error);
  }

  #send(event: ApiProcessEvent): boolean {
    return this.push(`${JSON.stringify(event)}\n`);
  }
}

/**
 * The processes of each sandbox that this server knows about: the ones it started, and ones it re-attached to by
 * pid (started by an earlier server, or inherited by a fork). Bounded per sandbox: the oldest exited ones go first.
 */
export class ProcessTable {
  readonly #bySandbox = new Map<string, Map<string, ServerProcess>>();

  get(sandboxId: string, pid: string): ServerProcess | undefined {
    return this.#bySandbox.get(sandboxId)?.get(pid);
  }

  list(sandboxId: string): ServerProcess[] {
    return [...(this.#bySandbox.get(sandboxId)?.values() ?? [])];
  }

  add(sandboxId: string, process: ServerProcess): void {
    let processes = this.#bySandbox.get(sandboxId);
    if (processes === undefined) this.#bySandbox.set(sandboxId, (processes = new Map()));
    processes.set(process.pid, process);
    for (const [pid, old] of processes) {
      if (processes.size <= API_LIMITS.maxProcessesPerSandbox) break;
      if (old.running) continue;
      processes.delete(pid);
      old.discardOutput();
    }
  }

  sandboxIds(): string[] {
    return [...this.#bySandbox.keys()];
  }

  /** Forgets a sandbox's processes (it has ended) and gives their kept output back to the budget. */
  forget(sandboxId: string): void {
    for (const process of this.#bySandbox.get(sandboxId)?.values() ?? []) process.discardOutput();
    this.#bySandbox.delete(sandboxId);
  }

  /**
   * Makes sure a process's output is being read: re-attaches after a session ended (pause/resume) or learns a pid
   * this server did not start (its kept output then counts against `budget`, its tenant's). Returns undefined
   * when the agent knows no such command.
   */
  async attach(sandboxId: string, pid: string, agent: AgentClient, budget: OutputBudget): Promise<ServerProcess | undefined> {
    let process = this.get(sandboxId, pid);
    if (process !== undefined && (process.attached || !process.running)) return process;
    if (process === undefined) {
      const known = (await agent.listCommands()).find((command) => command.id === pid);
      if (known === undefined) return undefined;
      process = new ServerProcess(pid, null, false, new Date(known.startedAtMs), budget);
      this.add(sandboxId, process);
    }
    const handle = agent.attach(pid);
    await handle.id;
    process.follow(handle);
    return process;
  }
}
