import type { ExecExit } from "@codecourier/protocol";

/** What the signal route needs from a running command. */
export interface SignalTarget {
  readonly id: string;
  signal(signal: NodeJS.Signals): void;
}

/** What the registry needs from a command to list it and to remember its exit. */
export interface RegisteredCommand extends SignalTarget {
  readonly background: boolean;
  /** Guest wall clock at start, ms since the epoch. */
  readonly startedAtMs: number;
}

/** A background command that has exited: kept so a host that was away can still learn how it ended. */
export interface ExitedCommand {
  readonly id: string;
  readonly startedAtMs: number;
  readonly exit: ExecExit;
}

/**
 * Running commands by id, across all sessions of one agent process, with a fixed capacity; plus the exits of the
 * last `exitCapacity` background commands (a foreground command's exit goes to its stream, nobody asks later).
 */
export class CommandRegistry<T extends RegisteredCommand = RegisteredCommand> {
  readonly #running = new Map<string, T>();
  /** Insertion-ordered, so the first entry is the oldest exit and the one to drop. */
  readonly #exited = new Map<string, ExitedCommand>();

  constructor(
    readonly capacity: number,
    readonly exitCapacity: number,
  ) {}

  /** Running commands. */
  get size(): number {
    return this.#running.size;
  }

  get isFull(): boolean {
    return this.#running.size >= this.capacity;
  }

  add(command: T): void {
    this.#running.set(command.id, command);
  }

  /** A running command. */
  get(id: string): T | undefined {
    return this.#running.get(id);
  }

  /** Running commands. */
  values(): IterableIterator<T> {
    return this.#running.values();
  }

  /** Removes a command from the running set; a background command's exit is remembered (if it has one). */
  finish(command: T, exit: ExecExit | undefined): void {
    this.#running.delete(command.id);
    if (!command.background || exit === undefined) return;
    this.#exited.set(command.id, { id: command.id, startedAtMs: command.startedAtMs, exit });
    for (const oldest of this.#exited.keys()) {
      if (this.#exited.size <= this.exitCapacity) break;
      this.#exited.delete(oldest);
    }
  }

  /** A remembered exit of a background command. */
  exited(id: string): ExitedCommand | undefined {
    return this.#exited.get(id);
  }

  /** Remembered exits of background commands, oldest first. */
  exitedValues(): IterableIterator<ExitedCommand> {
    return this.#exited.values();
  }
}
