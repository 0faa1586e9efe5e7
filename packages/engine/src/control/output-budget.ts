import { API_LIMITS } from "@codecourier/protocol/api";

/** A piece of kept output in a budget. Its owner releases it when it drops the output itself. */
export interface KeptOutput {
  release(): void;
}

interface KeptEntry {
  readonly bytes: number;
  readonly evict: () => void;
  live: boolean;
}

/** Dead queue entries tolerated before the queue is compacted (and at least half of it must be dead). */
const compactAfterDeadEntries = 1024;

/**
 * The output bytes the server may hold for one tenant at a time, across all its commands and processes: without
 * it a tenant with many processes (each keeping its last few MiB) or many run-to-completion calls in flight could
 * make the server hold memory without bound.
 *
 * Two kinds of holdings share it. Kept process output ({@link keep}) is evictable: when room is needed the oldest
 * piece of it, whichever process it belongs to, is dropped first (its owner is told, and replay from that process
 * then starts later). Output being collected for a run-to-completion answer ({@link reserve}) is not: it is held
 * until the answer has been sent, and a reservation that finds no room is refused (that command's output is
 * truncated). Everything here is synchronous, so a check and its charge can never interleave with another's.
 */
export class OutputBudget {
  #usedBytes = 0;
  /** Kept (evictable) pieces in the order they were kept; `#head` is the oldest still queued. */
  #queue: KeptEntry[] = [];
  #head = 0;
  /** Entries in the queue (from `#head` on) whose owner released them. */
  #deadEntries = 0;

  constructor(readonly limitBytes: number = API_LIMITS.tenantOutputBudgetBytes) {}

  /** Bytes held now: kept output and reservations. */
  get usedBytes(): number {
    return this.#usedBytes;
  }

  /**
   * Reserves up to `wanted` bytes of output that is being collected, evicting the oldest kept output to make room;
   * returns how many were granted (0 when every byte is held by other collections). Give them back with release().
   */
  reserve(wanted: number): number {
    this.#makeRoom(wanted);
    const granted = Math.max(0, Math.min(wanted, this.limitBytes - this.#usedBytes));
    this.#usedBytes += granted;
    return granted;
  }

  /** Gives back reserved bytes. */
  release(bytes: number): void {
    if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes > this.#usedBytes) throw new RangeError(`cannot release ${bytes} of ${this.#usedBytes} bytes`);
    this.#usedBytes -= bytes;
  }

  /**
   * Keeps `bytes` of evictable output, evicting older kept output if need be. `evict` is called (once, instead of a
   * release) when the budget drops this piece to make room. Undefined when it does not fit even then.
   */
  keep(bytes: number, evict: () => void): KeptOutput | undefined {
    this.#makeRoom(bytes);
    if (this.#usedBytes + bytes > this.limitBytes) return undefined;
    const entry: KeptEntry = { bytes, evict, live: true };
    this.#usedBytes += bytes;
    this.#queue.push(entry);
    return { release: () => this.#release(entry) };
  }

  #release(entry: KeptEntry): void {
    if (!entry.live) return;
    entry.live = false;
    this.#usedBytes -= entry.bytes;
    this.#deadEntries++;
    this.#compact();
  }

  /** Evicts the oldest kept output until `wanted` more bytes fit, or nothing evictable is left. */
  #makeRoom(wanted: number): void {
    while (this.#usedBytes + wanted > this.limitBytes && this.#head < this.#queue.length) {
      const entry = this.#queue[this.#head++]!;
      if (!entry.live) {
        this.#deadEntries--;
        continue;
      }
      entry.live = false;
      this.#usedBytes -= entry.bytes;
      entry.evict();
    }
    this.#compact();
  }

  /** Keeps the queue's length proportional to what it holds (released pieces leave holes in it). */
  #compact(): void {
    const queued = this.#queue.length - this.#head;
    if (this.#head > compactAfterDeadEntries && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    if (this.#deadEntries > compactAfterDeadEntries && this.#deadEntries * 2 > queued) {
      this.#queue = this.#queue.slice(this.#head).filter((entry) => entry.live);
      this.#head = 0;
      this.#deadEntries = 0;
    }
  }
}

/** One {@link OutputBudget} per tenant, made when first needed. */
export class TenantOutputBudgets {
  readonly #byTenant = new Map<string, OutputBudget>();

  constructor(readonly limitBytes: number = API_LIMITS.tenantOutputBudgetBytes) {}

  of(tenantId: string): OutputBudget {
    let budget = this.#byTenant.get(tenantId);
    if (budget === undefined) this.#byTenant.set(tenantId, (budget = new OutputBudget(this.limitBytes)));
    return budget;
  }
}
