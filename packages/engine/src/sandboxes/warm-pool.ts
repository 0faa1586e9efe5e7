/**
 * Restored, warmed clones kept ready per snapshot, so a create pays neither QEMU start nor the cold TCG
 * translation of the agent's hot paths. Refilled in the background after every take; drained on close.
 * The pool knows clones only by sandbox id; producing and discarding them is the engine's job.
 *
 * A refill after a take waits `refillDelayMs` first: restoring a clone costs a fresh QEMU about a CPU-second of
 * translation, and on a small host that would be taken from the sandbox just handed out, whose first commands are
 * what its caller is waiting for (measured under TCG on 2 cores: first exec ~155 ms with an immediate refill,
 * ~90 ms with a delayed one).
 */
export class WarmPool {
  readonly #ready = new Map<string, string[]>();
  readonly #filling = new Map<string, Promise<void>>();
  readonly #wanted = new Set<string>();
  readonly #delayed = new Map<string, { done: Promise<void>; fire: () => void }>();
  #closed = false;

  constructor(
    readonly size: number,
    readonly refillDelayMs: number,
    private readonly clones: {
      produce: (snapshotId: string) => Promise<string>;
      discard: (sandboxId: string) => Promise<void>;
    },
  ) {}

  /** Starts keeping `size` clones of this snapshot. */
  ensure(snapshotId: string): void {
    if (this.size <= 0 || this.#closed) return;
    this.#wanted.add(snapshotId);
    this.#refill(snapshotId);
  }

  /** Whether clones of this snapshot are being kept. */
  keeps(snapshotId: string): boolean {
    return this.#wanted.has(snapshotId);
  }

  /** A ready clone's sandbox id, or undefined when none is ready. Starts a refill. */
  take(snapshotId: string): string | undefined {
    const id = this.#ready.get(snapshotId)?.shift();
    if (this.#wanted.has(snapshotId)) {
      if (id === undefined || this.refillDelayMs <= 0) this.#refill(snapshotId);
      else this.#refillLater(snapshotId);
    }
    return id;
  }

  /** Resolves once this snapshot's pool is full (or the pool stopped filling it), including a delayed refill. */
  async filled(snapshotId: string): Promise<void> {
    for (;;) {
      const pending = this.#delayed.get(snapshotId)?.done ?? this.#filling.get(snapshotId);
      if (!pending) return;
      await pending;
    }
  }

  /** Stops keeping clones of this snapshot and discards the ready ones. */
  async drain(snapshotId: string): Promise<void> {
    this.#wanted.delete(snapshotId);
    this.#delayed.get(snapshotId)?.fire();
    await this.#filling.get(snapshotId)?.catch(() => {});
    const ready = this.#ready.get(snapshotId) ?? [];
    this.#ready.delete(snapshotId);
    await Promise.all(ready.map((id) => this.clones.discard(id).catch(() => {})));
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const snapshotId of [...this.#wanted, ...this.#ready.keys()]) await this.drain(snapshotId);
  }

  #refillLater(snapshotId: string): void {
    if (this.#delayed.has(snapshotId)) return;
    let fire!: () => void;
    const done = new Promise<void>((resolve) => {
      fire = () => {
        clearTimeout(timer);
        if (this.#delayed.get(snapshotId)?.done !== done) return;
        this.#delayed.delete(snapshotId);
        this.#refill(snapshotId);
        resolve();
      };
    });
    const timer = setTimeout(() => fire(), this.refillDelayMs);
    this.#delayed.set(snapshotId, { done, fire });
  }

  #refill(snapshotId: string): void {
    if (this.#filling.has(snapshotId) || this.#closed || !this.#wanted.has(snapshotId)) return;
    const fill = (async () => {
      let failures = 0;
      while (!this.#closed && this.#wanted.has(snapshotId) && (this.#ready.get(snapshotId)?.length ?? 0) < this.size) {
        try {
          const id = await this.clones.produce(snapshotId);
          if (this.#closed || !this.#wanted.has(snapshotId)) {
            await this.clones.discard(id);
            break;
          }
          const ready = this.#ready.get(snapshotId) ?? [];
          ready.push(id);
          this.#ready.set(snapshotId, ready);
          failures = 0;
        } catch {
          // A failing template (deleted, incompatible) must not spin: give up after a few attempts in a row.
          if (++failures >= 3) break;
        }
      }
    })().finally(() => this.#filling.delete(snapshotId));
    this.#filling.set(snapshotId, fill);
  }
}
