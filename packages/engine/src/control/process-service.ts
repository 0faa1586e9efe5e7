import {
  PtySizeSchema,
  SignalRequestSchema,
  StartProcessRequestSchema,
  type ApiProcessInfo,
} from "@codecourier/protocol/api";
import { PassThrough, type Readable } from "node:stream";
import type { z } from "zod";
import { AgentError } from "../agent-client/errors.js";
import { ApiError, notFound } from "../server/api-error.js";
import type { RunningSandbox } from "../sandboxes/sandbox-engine.js";
import type { Tenant } from "./control-store.js";
import { ProcessTable, ServerProcess, processInfo } from "./processes.js";
import type { SandboxService } from "./sandbox-service.js";

/** Most bytes one stdin request may carry: stdin is interactive input, bulk data goes through the files API. */
export const MAX_STDIN_REQUEST_BYTES = 1024 * 1024;

/**
 * Processes through the API: start one, stream its output from any point, write its stdin, signal it, resize its
 * terminal, and find it again by pid after a pause, a server restart or a fork. Every call goes through
 * SandboxService.runningSandbox first, so another tenant's sandbox is a 404 and a paused one is resumed. The output
 * kept for replay counts against the tenant's output budget (SandboxService.outputBudgets), shared with its
 * run-to-completion commands.
 */
export class ProcessService {
  readonly #table = new ProcessTable();

  constructor(private readonly sandboxes: SandboxService) {}

  async start(tenant: Tenant, sandboxId: string, body: unknown): Promise<ApiProcessInfo> {
    const request = StartProcessRequestSchema.parse(body) as z.output<typeof StartProcessRequestSchema>;
    this.#forgetEnded();
    const { running, spec } = await this.sandboxes.prepareCommand(tenant, sandboxId, request);
    const hasStdin = request.keepStdinOpen || request.stdin !== undefined;
    const stdin = hasStdin ? new PassThrough() : undefined;
    if (stdin !== undefined && request.stdin !== undefined) stdin.write(request.stdin);
    if (stdin !== undefined && !request.keepStdinOpen) stdin.end();
    const handle = running.agent.exec(
      { ...spec, background: true, stdin: hasStdin, ...(request.pty ? { pty: request.pty } : {}) },
      stdin === undefined ? {} : { stdin },
    );
    // A command that cannot start (bad cwd, no such program) still gets a pid: it exits at once, saying why on
    // its stderr, as it would in a shell.
    const pid = await handle.id;
    const process = new ServerProcess(pid, describe(request), request.pty !== undefined, new Date(), this.sandboxes.outputBudgets.of(tenant.id));
    process.follow(handle, request.keepStdinOpen ? stdin : undefined);
    this.#table.add(sandboxId, process);
    return process.info();
  }

  async get(tenant: Tenant, sandboxId: string, pid: string): Promise<ApiProcessInfo> {
    return (await this.#process(tenant, sandboxId, pid)).process.info();
  }

  /** The processes this server knows in the sandbox and the background commands its agent reports. */
  async list(tenant: Tenant, sandboxId: string): Promise<ApiProcessInfo[]> {
    const running = await this.sandboxes.runningSandbox(tenant, sandboxId);
    const known = new Map(this.#table.list(sandboxId).map((process) => [process.pid, process.info()]));
    for (const command of await running.agent.listCommands()) {
      if (known.has(command.id)) continue;
      // Started elsewhere (an earlier server, the fork's source): the agent does not say what it runs.
      const startedAt = new Date(command.startedAtMs);
      known.set(command.id, processInfo({ pid: command.id, command: null, pty: false, startedAt, running: command.running, exit: command.exit }));
    }
    return [...known.values()].sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  }

  /** NDJSON output events from sequence number `from`; with `follow`, until the process exits. */
  async output(tenant: Tenant, sandboxId: string, pid: string, from: number, follow: boolean): Promise<Readable> {
    return (await this.#process(tenant, sandboxId, pid)).process.feed(from, follow);
  }

  async writeStdin(tenant: Tenant, sandboxId: string, pid: string, body: Readable): Promise<void> {
    const { process } = await this.#process(tenant, sandboxId, pid);
    const data = await readBounded(body, MAX_STDIN_REQUEST_BYTES);
    if (!process.writeStdin(data)) throw stdinClosed(process);
  }

  async closeStdin(tenant: Tenant, sandboxId: string, pid: string): Promise<void> {
    const { process } = await this.#process(tenant, sandboxId, pid);
    if (!process.closeStdin() && process.running) throw stdinClosed(process);
  }

  async signal(tenant: Tenant, sandboxId: string, pid: string, body: unknown): Promise<ApiProcessInfo> {
    const { signal } = SignalRequestSchema.parse(body ?? {});
    const { running, process } = await this.#process(tenant, sandboxId, pid);
    // One that has already exited needs no signal; the answer says how it ended.
    if (process.running) await running.agent.signal(pid, signal);
    return process.info();
  }

  async resize(tenant: Tenant, sandboxId: string, pid: string, body: unknown): Promise<void> {
    const { rows, cols } = PtySizeSchema.parse(body);
    const { running, process } = await this.#process(tenant, sandboxId, pid);
    if (!process.running) throw new ApiError("conflict", `process ${pid} has exited`);
    await running.agent.resize(pid, rows, cols);
  }

  /** The tenant's running sandbox and one of its processes, with its output being read (re-attached if need be). */
  async #process(tenant: Tenant, sandboxId: string, pid: string): Promise<{ running: RunningSandbox; process: ServerProcess }> {
    const running = await this.sandboxes.runningSandbox(tenant, sandboxId);
    if (!/^[A-Za-z0-9-]{1,64}$/.test(pid)) throw notFound(`no process ${pid}`);
    try {
      const process = await this.#table.attach(sandboxId, pid, running.agent, this.sandboxes.outputBudgets.of(tenant.id));
      if (process === undefined) throw notFound(`no process ${pid} in sandbox ${sandboxId}`);
      return { running, process };
    } catch (error) {
      if (error instanceof AgentError && error.code === "not_found") throw notFound(`no process ${pid} in sandbox ${sandboxId}`);
      throw error;
    }
  }

  /** Drops the processes of sandboxes that have ended, so the table holds only live sandboxes'. */
  #forgetEnded(): void {
    for (const sandboxId of this.#table.sandboxIds()) if (!this.sandboxes.isLive(sandboxId)) this.#table.forget(sandboxId);
  }
}

function describe(request: { cmd?: string; argv?: string[] }): string {
  const text = request.cmd ?? (request.argv ?? []).map((word) => (/^[\w./=:@-]+$/.test(word) ? word : JSON.stringify(word))).join(" ");
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

function stdinClosed(process: ServerProcess): ApiError {
  const why = process.running
    ? "its stdin is not open (start it with keepStdinOpen, and stdin does not survive a pause or a server restart)"
    : "it has exited";
  return new ApiError("conflict", `cannot write to process ${process.pid}: ${why}`);
}

async function readBounded(body: Readable, maxBytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes) {
      body.destroy();
      throw new ApiError("payload_too_large", `stdin requests carry at most ${maxBytes} bytes; send more in several`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
