import { connect, type Socket } from "node:net";
import { EventEmitter } from "node:events";

/** QMP reply lines are small; anything larger is a broken or hostile peer. */
const MAX_LINE_BYTES = 1024 * 1024;

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    message: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${message}`);
    this.name = "QmpError";
  }
}

export interface QmpEvent {
  event: string;
  data?: unknown;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * A minimal QMP client: greeting, capability negotiation, commands with ids and timeouts, and events.
 * Emits "event" (QmpEvent) and "close".
 */
export class QmpClient extends EventEmitter {
  private buffer = "";
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closed = false;

  private constructor(private readonly socket: Socket) {
    super();
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.onData(chunk));
    socket.on("close", () => this.onClose(new Error("QMP connection closed")));
    socket.on("error", (error) => this.onClose(error));
  }

  /** Connects, reads the greeting and leaves capability-negotiation mode. */
  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = connect(path);
    const client = new QmpClient(socket);
    const greeting = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no QMP greeting on ${path} within ${timeoutMs} ms`)), timeoutMs);
      client.once("greeting", () => {
        clearTimeout(timer);
        resolve();
      });
      client.once("close", (error: Error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    try {
      await greeting;
      await client.execute("qmp_capabilities", undefined, timeoutMs);
    } catch (error) {
      socket.destroy();
      throw error;
    }
    return client;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP ${command}: connection closed`));
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`QMP ${command}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(JSON.stringify({ execute: command, arguments: args, id }) + "\n");
    });
  }

  /** Resolves with the next event of that name (or rejects after the timeout). */
  waitForEvent(name: string, timeoutMs: number): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (event: QmpEvent) => {
        if (event.event !== name) return;
        cleanup();
        resolve(event);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`no QMP event ${name} within ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off("event", onEvent);
      };
      this.on("event", onEvent);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    if (this.buffer.length > MAX_LINE_BYTES && !this.buffer.includes("\n")) {
      this.socket.destroy(new Error("QMP line too long"));
      return;
    }
    let newline: number;
    while ((newline = this.buffer.indexOf("\n")) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if ("QMP" in message) {
      this.emit("greeting", message.QMP);
      return;
    }
    if (typeof message.event === "string") {
      this.emit("event", message as unknown as QmpEvent);
      return;
    }
    const id = typeof message.id === "string" ? message.id : undefined;
    const pending = id ? this.pending.get(id) : undefined;
    if (!pending || !id) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ("error" in message) {
      const error = message.error as { class?: string; desc?: string };
      pending.reject(new QmpError(pending.command, error.class ?? "GenericError", error.desc ?? "unknown error"));
    } else {
      pending.resolve(message.return);
    }
  }

  private onClose(error: Error): void {
    if (this.closed) return;
    this.closed = true;
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(new Error(`QMP ${pending.command}: ${error.message}`));
    }
    this.pending.clear();
    this.emit("close", error);
  }
}
