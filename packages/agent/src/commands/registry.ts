/** What the signal route needs from a running command. */
export interface SignalTarget {
  readonly id: string;
  signal(signal: NodeJS.Signals): void;
}

/** Running commands by id, across all sessions of one agent process, with a fixed capacity. */
export class CommandRegistry<T extends SignalTarget = SignalTarget> {
  readonly #commands = new Map<string, T>();

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.#commands.size;
  }

  get isFull(): boolean {
    return this.#commands.size >= this.capacity;
  }

  add(command: T): void {
    this.#commands.set(command.id, command);
  }

  get(id: string): T | undefined {
    return this.#commands.get(id);
  }

  delete(id: string): void {
    this.#commands.delete(id);
  }

  values(): IterableIterator<T> {
    return this.#commands.values();
  }
}
