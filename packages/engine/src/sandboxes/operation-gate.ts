/**
 * Lets lifecycle operations run concurrently while garbage collection runs alone: an operation creates a disk layer
 * row a moment before the sandbox that owns it points at it, and a collection in between would free it.
 */
export class OperationGate {
  #running = 0;
  #exclusive: Promise<void> | undefined;
  #idle: Array<() => void> = [];

  async run<T>(operation: () => Promise<T>): Promise<T> {
    while (this.#exclusive) await this.#exclusive;
    this.#running++;
    try {
      return await operation();
    } finally {
      this.#running--;
      if (this.#running === 0) for (const wake of this.#idle.splice(0)) wake();
    }
  }

  async exclusive<T>(operation: () => Promise<T>): Promise<T> {
    while (this.#exclusive) await this.#exclusive;
    let release!: () => void;
    this.#exclusive = new Promise((resolve) => (release = resolve));
    try {
      while (this.#running > 0) await new Promise<void>((resolve) => this.#idle.push(resolve));
      return await operation();
    } finally {
      this.#exclusive = undefined;
      release();
    }
  }
}

/** Serializes operations per key (one sandbox is snapshotted, paused or killed one step at a time). */
export class KeyedLock {
  readonly #tails = new Map<string, Promise<unknown>>();

  /** Whether an operation on `key` is running or queued. */
  isBusy(key: string): boolean {
    return this.#tails.has(key);
  }

  async run<T>(key: string, operation: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(operation);
    this.#tails.set(key, next);
    try {
      return await next;
    } finally {
      if (this.#tails.get(key) === next) this.#tails.delete(key);
    }
  }
}
